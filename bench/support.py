"""What the benchmarks in bench/ share: a prepared database, the server's environment and a staff
token, an open-loop pace, and the CPU and memory of a server process read from /proc.

Imported as ``bench.support`` by the scripts (each puts the repository on ``sys.path``, as
``tests.services`` lives beside bench/) and by uvicorn when it loads ``bench.rest:bare_app``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

import httpx

from petstore import db
from petstore.api.pets import create_pet
from petstore.api.users import create_user_row
from petstore.config import Settings
from petstore.models import CategoryBody, PetBody, PetStatus, Role, TagBody, UserBody
from tests.services import UvicornServer

REPO = Path(__file__).resolve().parents[1]
PETS = 100
STAFF = ("bench-staff", secrets.token_urlsafe(16))
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


async def prepare(database_url: str) -> None:
    """Migrate, then 100 available pets with a category and tags, and the staff user of ``STAFF``."""
    from petstore.migrations import migrate
    from plugins.auth.schema import MIGRATIONS as AUTH_TABLES

    await asyncio.to_thread(migrate, database_url, plugins=[AUTH_TABLES])  # the served plugins' tables too
    engine = db.create_engine(Settings(database_url=database_url, plugins=()))
    try:
        async with db.create_sessionmaker(engine)() as session:
            for number in range(PETS):
                body = PetBody(
                    name=f"Pet {number}",
                    category=CategoryBody(name=("Dogs", "Cats", "Birds")[number % 3]),
                    photo_urls=[f"/media/pets/{number}.png"],
                    tags=[TagBody(name="friendly"), TagBody(name=f"litter-{number % 5}")],
                    status=PetStatus.available,
                )
                await create_pet(session, body, inventory=False)
            await create_user_row(session, UserBody(username=STAFF[0], password=STAFF[1]), Role.staff)
            await session.commit()
    finally:
        await engine.dispose()


def server_env(database_url: str, workdir: Path) -> dict[str, str]:
    """The default plugins (JWT auth, rate limits, metrics) on, with a budget no run can exhaust."""
    return {
        "PETSTORE_DATABASE_URL": database_url,
        "PETSTORE_MEDIA_DIR": str(workdir / "media"),
        "PETSTORE_JWT_SECRET": secrets.token_urlsafe(48),
        "PETSTORE_RATE_LIMIT": "100000000/minute",
        "PYTHONPATH": str(REPO),
    }


def token_for(server: UvicornServer) -> str:
    """An access token of the ``STAFF`` user."""
    response = httpx.post(
        f"{server.url}/api/v3/auth/token", data={"username": STAFF[0], "password": STAFF[1]}, timeout=30
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


async def pace(start: float, n: int, rate: float) -> None:
    """Wait for the n-th slot of an open loop at ``rate`` per second from ``start`` (monotonic)."""
    delay = start + n / rate - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop when it is installed (what the clients of a benchmark should cost least on), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
