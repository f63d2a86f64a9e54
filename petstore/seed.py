"""Demo data for ``petstore seed``: pets with categories and tags, and three demo accounts.

Pets go through :func:`petstore.api.pets.create_pet`, the function behind ``POST /pet``, so each
seeded pet has its ``pet.created`` event in the outbox exactly as if a client had added it,
and each committed batch has one ``inventory.changed``.

The demo accounts (``admin``, ``staff``, ``customer``, one per role) share one password: the
caller's, or a generated one that :func:`seed` returns so the command can show it once. It is
never logged and never stored anywhere but as the accounts' Argon2id hashes.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from petstore.api.pets import create_pet
from petstore.api.users import create_user_row
from petstore.db.queries import find_user
from petstore.models import CategoryBody, Pet, PetBody, PetStatus, Role, TagBody, User, UserBody
from petstore.realtime import events

BATCH = 100  # pets per transaction: one inventory.changed each, and a bounded transaction

CATEGORIES = {
    "Dogs": ["Rex", "Bella", "Max", "Luna", "Charlie", "Daisy", "Rocky", "Molly", "Buddy", "Sadie"],
    "Cats": ["Milo", "Cleo", "Oliver", "Nala", "Simba", "Lily", "Leo", "Chloe", "Felix", "Misty"],
    "Birds": ["Kiwi", "Sunny", "Rio", "Pepper", "Skye", "Mango", "Blue", "Tweety"],
    "Fish": ["Nemo", "Dory", "Bubbles", "Finn", "Goldie", "Splash"],
    "Reptiles": ["Spike", "Ziggy", "Draco", "Shelly", "Iggy", "Rango"],
}
TAGS = ["friendly", "young", "senior", "house-trained", "vaccinated", "playful", "calm", "good-with-kids"]
# Mostly available, so the dashboard has something to sell.
STATUS_WEIGHTS = {PetStatus.available: 7, PetStatus.pending: 2, PetStatus.sold: 1}
DEMO_USERS = (("admin", Role.admin), ("staff", Role.staff), ("customer", Role.customer))


@dataclass
class SeedResult:
    pets: int = 0
    users: list[str] = field(default_factory=list)
    #: Set only when the password was generated here and at least one account was created with it.
    generated_password: str | None = None
    skipped: bool = False


def demo_pet(rng: random.Random, number: int) -> PetBody:
    category = rng.choice(list(CATEGORIES))
    name = f"{rng.choice(CATEGORIES[category])} {number}"
    tags = rng.sample(TAGS, k=rng.randint(1, 3))
    status = rng.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()))[0]
    return PetBody(
        name=name,
        category=CategoryBody(name=category),
        photo_urls=[],
        tags=[TagBody(name=tag) for tag in tags],
        status=status,
    )


async def is_empty(session: AsyncSession) -> bool:
    """No pets and no users: a database nobody has used yet."""
    pets = await session.scalar(select(func.count()).select_from(Pet))
    users = await session.scalar(select(func.count()).select_from(User))
    return not pets and not users


async def seed_pets(
    sessions: async_sessionmaker[AsyncSession], count: int, *, progress: Callable[[int], None] | None = None
) -> int:
    """Add ``count`` demo pets in batches; ``progress(n)`` is called after each committed batch."""
    rng = random.Random(count)  # noqa: S311 (demo data, reproducible for a given count)
    done = 0
    while done < count:
        size = min(BATCH, count - done)
        async with sessions() as session:
            for offset in range(size):
                await create_pet(session, demo_pet(rng, done + offset + 1), inventory=False)
            events.inventory_changed(session)
            await session.commit()
        done += size
        if progress is not None:
            progress(size)
    return done


async def seed_users(sessions: async_sessionmaker[AsyncSession], password: str | None) -> tuple[list[str], str | None]:
    """Create the demo accounts that do not exist yet; returns their names and the generated password, if any."""
    generated = None
    if password is None:
        password = generated = secrets.token_urlsafe(12)
    created = []
    async with sessions() as session:
        for username, role in DEMO_USERS:
            if await find_user(session, username) is None:
                await create_user_row(session, UserBody(username=username, password=password), role)
                created.append(username)
        await session.commit()
    return created, (generated if created else None)


async def seed(
    sessions: async_sessionmaker[AsyncSession],
    pets: int,
    *,
    password: str | None = None,
    if_empty: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SeedResult:
    """Demo accounts, then ``pets`` demo pets; with ``if_empty``, nothing at all unless the database is unused."""
    if if_empty:
        async with sessions() as session:
            if not await is_empty(session):
                return SeedResult(skipped=True)
    users, generated = await seed_users(sessions, password)
    count = await seed_pets(sessions, pets, progress=progress)
    return SeedResult(pets=count, users=users, generated_password=generated)
