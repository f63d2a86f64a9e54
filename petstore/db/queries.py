"""Reads that more than one part of the app makes: the endpoints, the real-time snapshots, the CLI.

They sit below the endpoints so that nothing imports an endpoint module for a query.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from petstore.errors import NotFound
from petstore.models import Pet, User

#: Load a pet's category and tags with it (they are always shown).
WITH_RELATIONS = (selectinload(Pet.category), selectinload(Pet.tags))  # type: ignore[arg-type]


async def load_pet(session: AsyncSession, pet_id: int, *, fresh: bool = False) -> Pet:
    """The pet with its category and tags; ``fresh`` re-reads rows this session already holds."""
    query = select(Pet).options(*WITH_RELATIONS).where(Pet.id == pet_id)  # type: ignore[arg-type]
    if fresh:
        query = query.execution_options(populate_existing=True)
    pet = (await session.execute(query)).scalar_one_or_none()
    if pet is None:
        raise NotFound(f"pet {pet_id} not found")
    return pet


async def find_user(session: AsyncSession, username: str) -> User | None:
    return (await session.execute(select(User).where(User.username == username))).scalar_one_or_none()  # type: ignore[arg-type]
