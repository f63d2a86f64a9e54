"""``/store``: inventory and orders. Order rules (SPEC §2), each in one transaction:

- an order is for an existing, ``available`` pet (404 / 409 otherwise), and makes it ``pending``;
- an order's status ``delivered`` makes its pet ``sold``;
- deleting an order that is not delivered makes its pet ``available`` again.

Customers see only their own orders; another user's order is 404, not 403 (no existence leak),
and the server picks the id of a customer's order (staff may choose one).
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from petstore.access import ALL_ORDERS, AUTHENTICATED, PLACE_ORDERS, Principal, may
from petstore.api.caching import conditional
from petstore.api.inputs import PAGE, id_param, pagination, path_id, read_model
from petstore.db import sync_id_sequence
from petstore.db.queries import load_pet
from petstore.errors import Conflict, Forbidden, NotFound, Unauthorized
from petstore.models import (
    ApiResponse,
    Order,
    OrderBody,
    OrderPatch,
    OrderPublic,
    OrderStatus,
    Pet,
    PetPublic,
    PetStatus,
    User,
)
from petstore.operations import FORM, JSON, Body, operation, ref
from petstore.realtime import events
from petstore.state import app_state

ORDER_ID = id_param("orderId", "ID of the order")
ORDER_LINKS = {op: {"orderId": "$response.body#/id"} for op in ("getOrderById", "updateOrder", "deleteOrder")}


def order_json(order: Order | OrderPublic) -> JSONResponse:
    public = order if isinstance(order, OrderPublic) else OrderPublic.model_validate(order, from_attributes=True)
    return JSONResponse(public.model_dump(mode="json", by_alias=True))


@operation(
    "GET",
    "/store/inventory",
    "getInventory",
    permission=None,
    tag="store",
    summary="Returns pet inventories by status.",
    description="Counts pets by status.",
    ok=ref("Inventory"),
    etag=True,
)
async def get_inventory(request: Request) -> Response:
    async with app_state(request).sessions() as session:
        return conditional(request, JSONResponse(await events.inventory_counts(session)))


async def _set_pet_status(
    session: AsyncSession, pet_id: int, status: PetStatus, *, only_from: PetStatus | None
) -> bool:
    """Change a pet's status in one conditional UPDATE, so that concurrent orders cannot both win."""
    statement = update(Pet).where(Pet.id == pet_id)  # type: ignore[arg-type]
    if only_from is not None:
        statement = statement.where(Pet.status == only_from.value)  # type: ignore[arg-type]
    result = await session.execute(statement.values(status=status.value))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def _pet_changed(session: AsyncSession, pet_id: int) -> None:
    pet = await load_pet(session, pet_id, fresh=True)
    events.pet_event(session, "pet.updated", PetPublic.model_validate(pet, from_attributes=True))
    events.inventory_changed(session)


async def _owner_name(session: AsyncSession, order: Order) -> str | None:
    if order.user_id is None:
        return None
    user = await session.get(User, order.user_id)
    return user.username if user else None


@operation(
    "POST",
    "/store/order",
    "placeOrder",
    permission=PLACE_ORDERS,
    tag="store",
    summary="Place an order for a pet.",
    description="The pet must be `available`; it becomes `pending` (`sold` for an order placed as delivered). "
    "The server picks the id of a customer's order (an `id` sent is ignored); staff may choose it.",
    body=Body({JSON: ref("Order"), FORM: ref("Order")}),
    ok=ref("Order"),
    links=ORDER_LINKS,
    errors={
        403: "Only staff may place an order as delivered",
        404: "Pet not found",
        409: "The pet is not available, or (staff) an order with this id exists",
    },
)
async def place_order(request: Request, who: Principal) -> Response:
    body = await read_model(request, OrderBody, form=True)
    status = body.status or OrderStatus.placed
    if status is not OrderStatus.placed and not may(request, ALL_ORDERS):
        raise Forbidden(f"only staff may place an order as {status.value}")
    # Only staff choose an order's id. A customer's 409 for a taken id would tell them another
    # user's order exists, which the 404 of every other order endpoint hides. Ignored rather than
    # refused: generated clients send the field whenever their model has it, as the Petstore's
    # own example (`"id": 10`) does, and read the id the server chose from the answer anyway.
    chosen_id = body.id if may(request, ALL_ORDERS) else None
    state = app_state(request)
    async with state.sessions() as session:
        # A token outlives the account it names; the order's owner must exist (foreign key).
        if await session.get(User, who.user_id) is None:
            raise Unauthorized("your account no longer exists")
        if chosen_id is not None and await session.get(Order, chosen_id) is not None:
            raise Conflict(f"order {chosen_id} already exists")
        new_pet_status = PetStatus.sold if status is OrderStatus.delivered else PetStatus.pending
        if not await _set_pet_status(session, body.pet_id, new_pet_status, only_from=PetStatus.available):
            if await session.get(Pet, body.pet_id) is None:
                raise NotFound(f"pet {body.pet_id} not found")
            raise Conflict(f"pet {body.pet_id} is not available")
        complete = bool(body.complete) or status is OrderStatus.delivered
        order = Order.model_validate(
            body, update={"id": chosen_id, "status": status.value, "complete": complete, "user_id": who.user_id}
        )
        session.add(order)
        await session.flush()
        if chosen_id is not None:
            await sync_id_sequence(session, "purchase_order")
        public = OrderPublic.model_validate(order, from_attributes=True)
        events.order_event(session, "order.placed", public, who.username)
        await _pet_changed(session, body.pet_id)
        await session.commit()
    state.outbox_wakeup.set()
    return order_json(public)


async def _visible_order(session: AsyncSession, request: Request, who: Principal, order_id: int) -> Order:
    order = await session.get(Order, order_id)
    if order is None or (order.user_id != who.user_id and not may(request, ALL_ORDERS)):
        raise NotFound(f"order {order_id} not found")
    return order


@operation(
    "GET",
    "/store/order/{orderId}",
    "getOrderById",
    permission=AUTHENTICATED,
    tag="store",
    summary="Find purchase order by ID.",
    params=(ORDER_ID,),
    ok=ref("Order"),
    errors={400: "Invalid ID supplied", 404: "Order not found (or not yours)"},
    etag=True,
)
async def get_order(request: Request, who: Principal) -> Response:
    order_id = path_id(request, "orderId", "order")
    async with app_state(request).sessions() as session:
        order = await _visible_order(session, request, who, order_id)
    return conditional(request, order_json(order), private=True)


@operation(
    "GET",
    "/store/orders",
    "listOrders",
    permission=AUTHENTICATED,
    tag="store",
    summary="Lists orders, newest first.",
    description="Your own orders; every order for staff and admins. (Not in the Petstore document.)",
    params=PAGE,
    ok={"type": "array", "items": ref("Order")},
    errors={400: "Invalid limit or offset"},
)
async def list_orders(request: Request, who: Principal) -> Response:
    """Extension: the caller's orders (every order for staff), newest first."""
    limit, offset = pagination(request)
    query = select(Order).order_by(Order.id.desc()).limit(limit).offset(offset)  # type: ignore[union-attr]
    if not may(request, ALL_ORDERS):
        query = query.where(Order.user_id == who.user_id)  # type: ignore[arg-type]
    async with app_state(request).sessions() as session:
        orders = (await session.execute(query)).scalars().all()
        return JSONResponse(
            [OrderPublic.model_validate(o, from_attributes=True).model_dump(mode="json", by_alias=True) for o in orders]
        )


@operation(
    "PATCH",
    "/store/order/{orderId}",
    "updateOrder",
    permission=ALL_ORDERS,
    tag="store",
    summary="Change an order's status.",
    description="Staff and admins; `delivered` makes the pet `sold`. (Not in the Petstore document.)",
    params=(ORDER_ID,),
    body=Body({JSON: ref("OrderPatch")}),
    ok=ref("Order"),
    errors={400: "or an invalid ID", 404: "Order not found", 409: "A delivered order cannot go back"},
)
async def update_order(request: Request, who: Principal) -> Response:
    """Extension for staff: change an order's status; ``delivered`` sells its pet."""
    order_id = path_id(request, "orderId", "order")
    patch = await read_model(request, OrderPatch)
    state = app_state(request)
    async with state.sessions() as session:
        order = await session.get(Order, order_id, with_for_update=True)
        if order is None:
            raise NotFound(f"order {order_id} not found")
        if order.status == OrderStatus.delivered and patch.status not in (None, OrderStatus.delivered):
            raise Conflict("a delivered order cannot go back")
        delivered_now = patch.status is OrderStatus.delivered and order.status != OrderStatus.delivered
        order.sqlmodel_update(patch.model_dump(exclude_none=True, by_alias=False))  # null changes nothing
        if delivered_now:
            order.complete = True
        await session.flush()
        public = OrderPublic.model_validate(order, from_attributes=True)
        events.order_event(session, "order.updated", public, await _owner_name(session, order))
        if delivered_now and await _set_pet_status(session, order.pet_id, PetStatus.sold, only_from=None):
            await _pet_changed(session, order.pet_id)
        await session.commit()
    state.outbox_wakeup.set()
    return order_json(public)


async def _release_pet(session: AsyncSession, pet_id: int) -> None:
    """A cancelled order frees its pet, unless another open order holds it (staff re-listed it meanwhile)."""
    open_orders = select(col(Order.id)).where(
        col(Order.pet_id) == pet_id,
        col(Order.status).in_([OrderStatus.placed.value, OrderStatus.approved.value]),
    )
    statement = (
        update(Pet)
        .where(col(Pet.id) == pet_id, col(Pet.status) == PetStatus.pending.value, ~open_orders.exists())
        .values(status=PetStatus.available.value)
    )
    if (await session.execute(statement)).rowcount:  # type: ignore[attr-defined]
        await _pet_changed(session, pet_id)


@operation(
    "DELETE",
    "/store/order/{orderId}",
    "deleteOrder",
    permission=AUTHENTICATED,
    tag="store",
    summary="Delete purchase order by identifier.",
    description="An order not yet delivered gives its pet back (`available`).",
    params=(ORDER_ID,),
    ok=ref("ApiResponse"),
    errors={400: "Invalid ID supplied", 404: "Order not found (or not yours)"},
)
async def delete_order(request: Request, who: Principal) -> Response:
    order_id = path_id(request, "orderId", "order")
    state = app_state(request)
    async with state.sessions() as session:
        order = await _visible_order(session, request, who, order_id)
        owner = await _owner_name(session, order)
        public = OrderPublic.model_validate(order, from_attributes=True)
        # A conditional DELETE: of two concurrent deletions only one frees the pet, the other is 404.
        deleted = await session.execute(delete(Order).where(col(Order.id) == order_id))
        if not deleted.rowcount:  # type: ignore[attr-defined]
            raise NotFound(f"order {order_id} not found")
        events.order_event(session, "order.deleted", public, owner)
        if public.status is not OrderStatus.delivered:
            await _release_pet(session, public.pet_id)
        await session.commit()
    state.outbox_wakeup.set()
    return JSONResponse(ApiResponse(code=200, type="ok", message=f"order {order_id} deleted").model_dump())


def routes(prefix: str) -> list[Route]:
    operations = [get_inventory, place_order, list_orders, get_order, update_order, delete_order]
    return [operation.route(prefix) for operation in operations]
