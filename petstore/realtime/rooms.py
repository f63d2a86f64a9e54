"""Room names and who may join them (SPEC §3). No I/O here."""

from __future__ import annotations

import re

from petstore.access import ALL_ORDERS, ALL_USERS, Principal
from petstore.models import INT64_MAX

INVENTORY = "inventory"
PETS = "pets"
ORDERS = "orders"

_PET = re.compile(r"^pet:([1-9][0-9]{0,18}|0)$")
_USER = re.compile(r"^user:([A-Za-z0-9_.@+-]{1,64})$")

ROOM_KINDS = ("inventory", "pets", "pet", "orders", "user")


def pet_room(pet_id: int) -> str:
    return f"pet:{pet_id}"


def user_room(username: str) -> str:
    return f"user:{username}"


def room_kind(room: str) -> str | None:
    """``inventory``, ``pets``, ``pet``, ``orders`` or ``user``; None for a name that is no room."""
    if room in (INVENTORY, PETS, ORDERS):
        return room
    if pet_id_of(room) is not None:
        return "pet"
    if _USER.match(room):
        return "user"
    return None


def pet_id_of(room: str) -> int | None:
    """The pet of a ``pet:{id}`` room; None when the name is no pet room, or names an id no pet
    can have (past the database's 64-bit ids, where a query would overflow)."""
    match = _PET.match(room)
    if match is None:
        return None
    pet_id = int(match.group(1))
    return pet_id if pet_id <= INT64_MAX else None


def may_join(principal: Principal | None, room: str) -> bool:
    """The core's rule; plugins may refuse more (``ws_authorize``)."""
    kind = room_kind(room)
    if kind in ("inventory", "pets", "pet"):
        return True
    if principal is None:
        return False
    if kind == "orders":
        return ALL_ORDERS in principal.scopes
    if kind == "user":
        return room == user_room(principal.username) or ALL_USERS in principal.scopes
    return False
