"""``/user``: accounts. Anyone may sign up (as a customer); a user reads and changes their own
account; admins manage every account. Another user's account is 404 (no existence leak).

An extension to the Petstore document: ``PATCH /user/{username}`` with ``{"role": "staff"}``,
admins only, changes a role (``petstore users set-role`` does the same through :func:`set_role`).
A token carries no authority of its own: every request is checked against the account's row as
it is then, so a new role holds from the next request on, and the live WebSocket and SSE
sessions the account opened end (``user_changed``), as when it is deleted or its password changes.

``/user/login`` and ``/user/logout`` belong to the auth plugin: the core authenticates no one.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from petstore.access import ALL_USERS, AUTHENTICATED, Principal, may
from petstore.api.caching import conditional
from petstore.api.inputs import PAGE, pagination, read_data, read_model, validate
from petstore.db import sync_id_sequence
from petstore.db.queries import find_user
from petstore.errors import BadRequest, Conflict, NotFound, ValidationFailed
from petstore.models import ApiResponse, Role, User, UserBody, UserPublic
from petstore.operations import FORM, JSON, Body, Param, operation, ref
from petstore.passwords import hash_password, password_problem
from petstore.state import app_state

MAX_USERS_PER_LIST = 100


#: What a PUT of an account replaces: every field it shows but its id (the password only when sent).
_REPLACED = tuple(name for name in UserPublic.model_fields if name != "id")


def user_json(user: User) -> JSONResponse:
    return JSONResponse(UserPublic.model_validate(user, from_attributes=True).model_dump(mode="json", by_alias=True))


def check_password(password: str) -> None:
    """422 for a password that may not be set (too short, too common: :func:`password_problem`)."""
    problem = password_problem(password)
    if problem is not None:
        raise ValidationFailed(f"password: {problem}")


async def create_user_row(session: AsyncSession, body: UserBody, role: Role) -> User:
    """Insert one user (the CLI uses this too). The caller commits."""
    if not body.password:
        raise ValidationFailed("password: a new user needs a password")
    check_password(body.password)
    if await find_user(session, body.username) is not None:
        raise Conflict(f"username {body.username!r} is taken")
    if body.id is not None and await session.get(User, body.id) is not None:
        raise Conflict(f"user id {body.id} is taken")
    user = User.model_validate(body, update={"password_hash": await hash_password(body.password), "role": role.value})
    session.add(user)
    await session.flush()
    if body.id is not None:
        await sync_id_sequence(session, "users")
    return user


async def _commit_unique(session: AsyncSession) -> None:
    # Two sign-ups racing for one username: the unique index decides, the loser gets 409.
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict("username or id is taken") from None


# A new account needs a password; a changed one keeps its password when none is sent.
NEW_USER = {"allOf": [ref("User")], "required": ["username", "password"]}
USER_LINKS = {op: {"username": "$response.body#/username"} for op in ("getUserByName", "updateUser", "deleteUser")}


async def _existing(session: AsyncSession, username: str) -> User:
    user = await find_user(session, username)
    if user is None:
        raise NotFound(f"user {username!r} not found")
    return user


@operation(
    "POST",
    "/user",
    "createUser",
    permission=None,
    tag="user",
    summary="Create user.",
    description=(
        "Anyone may sign up, as a customer. A password is required: at least 8 characters, and not one of the "
        "most common passwords (422 otherwise)."
    ),
    body=Body({JSON: NEW_USER, FORM: NEW_USER}, "Created user object"),
    ok=ref("User"),
    links=USER_LINKS,
    errors={409: "The username or id is taken"},
)
async def create_user(request: Request) -> Response:
    body = await read_model(request, UserBody, form=True)
    async with app_state(request).sessions() as session:
        user = await create_user_row(session, body, Role.customer)
        await _commit_unique(session)
        return user_json(user)


@operation(
    "POST",
    "/user/createWithList",
    "createUsersWithListInput",
    permission=ALL_USERS,
    tag="user",
    summary="Creates list of users with given input array.",
    description="Admins. Answers with the first user created.",
    body=Body({JSON: {"type": "array", "items": NEW_USER, "minItems": 1, "maxItems": MAX_USERS_PER_LIST}}),
    ok=ref("User"),
    links=USER_LINKS,
    errors={
        400: f"or not a non-empty array of at most {MAX_USERS_PER_LIST} users",
        409: "A username or id is taken, or named twice",
    },
)
async def create_users_with_list(request: Request, who: Principal) -> Response:
    data = await read_data(request)
    if not isinstance(data, list) or not data:
        raise BadRequest("send a non-empty JSON array of users")
    if len(data) > MAX_USERS_PER_LIST:
        raise BadRequest(f"at most {MAX_USERS_PER_LIST} users at once")
    bodies = [validate(UserBody, item) for item in data]
    if len({b.username for b in bodies}) != len(bodies):
        raise Conflict("the list names one username twice")
    async with app_state(request).sessions() as session:
        users = [await create_user_row(session, body, Role.customer) for body in bodies]
        await _commit_unique(session)
        # The Petstore document answers with one User: the first one created.
        return user_json(users[0])


_USERNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
USERNAME = Param("username", "path", {"type": "string", "pattern": f"^{_USERNAME.pattern}$"}, "The user's name")
# The Petstore document's 400, kept for its clients: a name no account can have is 404 here (path_username).
BAD_USERNAME = "Invalid username supplied: not a name an account can have"


def path_username(request: Request) -> str:
    """The ``{username}`` of the path. A name no account can have (NUL, spaces, too long) is not
    found without asking the database, which would refuse some of them with an error of its own."""
    username: str = request.path_params["username"]
    if not _USERNAME.fullmatch(username):
        raise NotFound(f"user {username[:64]!r} not found")
    return username


def _visible(request: Request, who: Principal, username: str) -> None:
    if who.username != username and not may(request, ALL_USERS):
        raise NotFound(f"user {username!r} not found")


@operation(
    "GET",
    "/user/{username}",
    "getUserByName",
    permission=AUTHENTICATED,
    tag="user",
    summary="Get user by user name.",
    description="Your own account; any account for admins.",
    params=(USERNAME,),
    ok=ref("User"),
    errors={400: BAD_USERNAME, 404: "User not found (or not you)"},
    etag=True,
)
async def get_user(request: Request, who: Principal) -> Response:
    username = path_username(request)
    _visible(request, who, username)
    async with app_state(request).sessions() as session:
        user = await _existing(session, username)
        return conditional(request, user_json(user), private=True)


@operation(
    "PUT",
    "/user/{username}",
    "updateUser",
    permission=AUTHENTICATED,
    tag="user",
    summary="Update user resource.",
    description=(
        "Your own account; any account for admins. A new password must have at least 8 characters and not be "
        "one of the most common passwords (422 otherwise)."
    ),
    params=(USERNAME,),
    body=Body({JSON: ref("User"), FORM: ref("User")}, "The user's new details"),
    ok=ref("User"),
    errors={
        400: "the id would change; or an invalid username",
        404: "User not found (or not you)",
        409: "The new username is taken",
    },
)
async def update_user(request: Request, who: Principal) -> Response:
    username = path_username(request)
    _visible(request, who, username)
    body = await read_model(request, UserBody, form=True)
    if body.password:
        check_password(body.password)
    async with app_state(request).sessions() as session:
        user = await _existing(session, username)
        if body.id is not None and body.id != user.id:
            raise BadRequest("a user's id cannot change")
        if body.username != user.username and await find_user(session, body.username) is not None:
            raise Conflict(f"username {body.username!r} is taken")
        # A new name or password: sessions opened with the old ones end (a new account may take
        # the name, and its ``user:{name}`` room with it).
        changed = body.username != user.username or bool(body.password)
        user.sqlmodel_update({name: getattr(body, name) for name in _REPLACED})
        if body.password:
            user.password_hash = await hash_password(body.password)
        await _commit_unique(session)
        response = user_json(user)
    if changed:
        assert user.id is not None
        await app_state(request).plugins.user_changed(user.id)
    return response


async def delete_user_row(session: AsyncSession, username: str) -> int:
    """Delete ``username`` (REST and ``petstore users delete``); its id. The caller commits, then
    tells the plugins (``user_changed``). Its orders stay, as records."""
    user = await _existing(session, username)
    user_id = user.id
    assert user_id is not None
    await session.delete(user)
    return user_id


@operation(
    "DELETE",
    "/user/{username}",
    "deleteUser",
    permission=AUTHENTICATED,
    tag="user",
    summary="Delete user resource.",
    description="Your own account; any account for admins.",
    params=(USERNAME,),
    ok=ref("ApiResponse"),
    errors={400: BAD_USERNAME, 404: "User not found (or not you)"},
)
async def delete_user(request: Request, who: Principal) -> Response:
    username = path_username(request)
    _visible(request, who, username)
    async with app_state(request).sessions() as session:
        user_id = await delete_user_row(session, username)
        await session.commit()
    await app_state(request).plugins.user_changed(user_id)  # its live sessions end
    return JSONResponse(ApiResponse(code=200, type="ok", message=f"user {username} deleted").model_dump())


class RoleChange(BaseModel):
    """The body of ``PATCH /user/{username}``."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "staff", "customer"]


class LastAdmin(Conflict):
    """The change would leave no admin: nobody could manage accounts through the API any more."""


async def set_role(session: AsyncSession, username: str, role: Role) -> tuple[User, bool]:
    """Give ``username`` the role ``role`` (REST and ``petstore users set-role``); the user and
    whether the role changed. The caller commits, then tells the plugins (``user_changed``)."""
    user = await _existing(session, username)
    if user.role == role.value:
        return user, False
    if user.role == Role.admin.value:
        admins = await session.scalar(select(func.count()).select_from(User).where(col(User.role) == Role.admin.value))
        if admins == 1:
            raise LastAdmin(f"{username!r} is the only admin: make another admin first")
    user.role = role.value
    return user, True


ROLE_CHANGE = {
    "type": "object",
    "required": ["role"],
    "properties": {"role": {"type": "string", "enum": [role.value for role in Role]}},
    "additionalProperties": False,
}
USER_ROLE = {
    "type": "object",
    "required": ["username", "role"],
    "properties": {"username": {"type": "string"}, "role": {"type": "string", "enum": [role.value for role in Role]}},
    "additionalProperties": False,
}


@operation(
    "PATCH",
    "/user/{username}",
    "setUserRole",
    permission=ALL_USERS,
    tag="user",
    summary="Change a user's role (an extension to the Petstore document).",
    description=(
        "Admins. The new role holds from the account's next request on, with the tokens it already has; "
        "its live WebSocket and SSE sessions end (it connects again with its new rights)."
    ),
    params=(USERNAME,),
    body=Body({JSON: ROLE_CHANGE}, "The new role"),
    ok=USER_ROLE,
    errors={
        400: BAD_USERNAME,
        404: "User not found",
        409: "The user is the only admin",
        422: "or not one of the roles admin, staff, customer",
    },
)
async def set_user_role(request: Request, who: Principal) -> Response:
    username = path_username(request)
    change = await read_model(request, RoleChange)
    async with app_state(request).sessions() as session:
        user, changed = await set_role(session, username, Role(change.role))
        await session.commit()
        body = {"username": user.username, "role": user.role}
        user_id = user.id
    if changed:
        assert user_id is not None
        await app_state(request).plugins.user_changed(user_id)  # live sessions end; they reconnect with the new role
    return JSONResponse(body)


USER_LISTED = {
    "type": "object",
    "required": ["id", "username", "role"],
    "properties": {
        "id": {"type": "integer", "format": "int64"},
        "username": {"type": "string"},
        "role": {"type": "string", "enum": [role.value for role in Role]},
    },
    "additionalProperties": False,
}


@operation(
    "GET",
    "/user",
    "listUsers",
    permission=ALL_USERS,
    tag="user",
    summary="Lists the accounts and their roles, by name (an extension to the Petstore document).",
    description="Admins: what the dashboard's users view shows, with `PATCH /user/{username}` to change a role.",
    params=PAGE,
    ok={"type": "array", "items": USER_LISTED},
    errors={400: "Invalid limit or offset"},
)
async def list_users(request: Request, who: Principal) -> Response:
    limit, offset = pagination(request)
    query = select(User).order_by(col(User.username)).limit(limit).offset(offset)
    async with app_state(request).sessions() as session:
        users = (await session.execute(query)).scalars().all()
        return JSONResponse([{"id": u.id, "username": u.username, "role": u.role} for u in users])


def routes(prefix: str) -> list[Route]:
    operations = [create_user, create_users_with_list, list_users, get_user, update_user, delete_user, set_user_role]
    return [operation.route(prefix) for operation in operations]
