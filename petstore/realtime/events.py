"""Events: what each change to pets and orders tells subscribers, written to the outbox in the
same transaction as the change, so that a committed change always has its events (SPEC §6).

Payloads (``data``), by event:

- ``pet.created`` / ``pet.updated``: the Pet as REST shows it; ``pet.deleted``: ``{"id": n}``.
  Rooms: ``pets`` and ``pet:{id}``.
- ``order.placed`` / ``order.updated`` / ``order.deleted``: the Order as REST shows it.
  Rooms: ``orders`` and ``user:{owner}``.
- ``inventory.changed``: ``{"available": n, "pending": n, "sold": n}``. Room: ``inventory``.
  Its outbox row carries no counts: the relay counts when it publishes, after commit, because
  counts taken inside two concurrent transactions can each miss the other's pet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, func, insert, select
from sqlalchemy import event as orm_event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from petstore.models import OrderPublic, OutboxEvent, Pet, PetPublic, PetStatus, utcnow
from petstore.realtime import rooms

#: Where a session keeps the outbox rows it has recorded and not yet written.
_PENDING = "petstore.outbox"
#: Where a session finds the tracing plugins' context, when they are loaded (:func:`keep_trace_context`).
_TRACE_CONTEXT = "petstore.trace_context"


def keep_trace_context(
    sessions: async_sessionmaker[AsyncSession], context: Callable[[], dict[str, str] | None]
) -> None:
    """The outbox rows that ``sessions`` write keep ``context()``, taken as the change commits (in
    the task of the request that made it): tracing plugins follow an event with it."""
    sessions.configure(info={_TRACE_CONTEXT: context})


def record(session: AsyncSession, event: str, room_names: list[str], data: dict[str, Any]) -> None:
    """Add one event to the transaction's outbox rows, written all at once when it commits."""
    row = {"event": event, "rooms": room_names, "data": data, "created_at": utcnow()}
    session.info.setdefault(_PENDING, []).append(row)


_OUTBOX: Table = OutboxEvent.__table__  # type: ignore[attr-defined]


@orm_event.listens_for(Session, "before_commit")
def _write_outbox(session: Session) -> None:
    """One multi-row INSERT in the committing transaction, with no ids to read back: the ORM
    would insert each row on its own to return its id (SQLite cannot batch that). On the
    session's connection, as Core: the ORM's bulk insert maps each row first (a fifteenth of a
    ``POST /pet``'s CPU, profiled)."""
    rows = session.info.pop(_PENDING, None)
    if rows:
        context = session.info.get(_TRACE_CONTEXT)
        if context is not None and (kept := context()) is not None:
            for row in rows:
                row["trace_context"] = kept
        session.connection().execute(insert(_OUTBOX), rows)


@orm_event.listens_for(Session, "after_rollback")
def _forget_outbox(session: Session) -> None:
    session.info.pop(_PENDING, None)


def pet_event(session: AsyncSession, event: str, pet: PetPublic) -> None:
    record(session, event, [rooms.PETS, rooms.pet_room(pet.id)], pet.model_dump(mode="json", by_alias=True))


def pet_deleted(session: AsyncSession, pet_id: int) -> None:
    record(session, "pet.deleted", [rooms.PETS, rooms.pet_room(pet_id)], {"id": pet_id})


def order_event(session: AsyncSession, event: str, order: OrderPublic, owner: str | None) -> None:
    room_names = [rooms.ORDERS] + ([rooms.user_room(owner)] if owner else [])
    record(session, event, room_names, order.model_dump(mode="json", by_alias=True))


_PETS: Table = Pet.__table__  # type: ignore[attr-defined]
#: Built once: every change's relay pass runs it.
_COUNTS = select(_PETS.c.status, func.count()).group_by(_PETS.c.status)


async def inventory_counts(session: AsyncSession) -> dict[str, int]:
    """Pets by status, every status present (0 where none)."""
    counts = {status.value: 0 for status in PetStatus}
    for status, count in (await session.execute(_COUNTS)).all():
        counts[status] = count
    return counts


def inventory_changed(session: AsyncSession) -> None:
    """Record that the counts changed; the relay fills them in when it publishes (see above)."""
    record(session, "inventory.changed", [rooms.INVENTORY], {})
