"""REST benchmark: the served petstore (plugins on) beside a bare Starlette endpoint and a FastAPI app, same database.

Run by hand, not by the tests::

    .venv/bin/python bench/rest.py                 # 10 s per scenario, 50 connections
    .venv/bin/python bench/rest.py --duration 20 --plot rest.png
    .venv/bin/python bench/rest.py --database-url postgresql+asyncpg://...   # an empty database

Needs ``wrk`` (Debian package wrk) as the load generator: a Python client would use as much CPU
as the server it measures. The three servers run as real uvicorn subprocesses with the same
options (one worker, no access log) against the same database, prepared here: 100 available pets
with a category and tags (findByStatus returns all 100), and a staff user whose token authorizes
POST. Each scenario measures them in alternating rounds, so that whatever else the machine does
weighs on all three alike.

The petstore runs its default plugins (auth, rate limit with a limit too high to trigger,
metrics). The bare app answers the same JSON through the same models and queries, with no
middleware, no plugins and no events: the table shows what everything else costs. The FastAPI
app (``fastapi_app``) is FastAPI and SQLModel as their documentation writes an app: a sync
engine, a session per request from a ``Depends`` dependency, plain ``def`` path operations in
FastAPI's threadpool, ``response_model=PetPublic``; on the project's models and the SQLite file
(``sqlite://`` of it, or ``postgresql+psycopg://``: the sync drivers its tutorial uses).
It departs from the tutorial twice, both in comments: a pet's category and tags are loaded with
it (the models forbid lazy loads), and its connections set the petstore's SQLite pragmas.

The table gives each server's req/s and p99 latency per scenario, and the petstore's req/s over
each other server's against the targets (3x for GET by id, 5x for findByStatus, 1.5x for POST).
``--plot PATH`` also writes them as a PNG bar chart, req/s with p99 on each bar.

``--search`` measures ``GET /pet/search`` instead, on the petstore alone, at each size of
``--sizes`` (default 100 and 100,000 pets, written straight into a migrated database with seed-like
names, categories, tags and statuses): a first page and a page deep in the walk (its cursor
taken half way through the matches) for each kind of filter, so the table shows whether a page
at 100,000 pets costs what it costs at 100::

    .venv/bin/python bench/rest.py --search --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import sqlmodel
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from sqlalchemy import event, make_url, select, text
from sqlalchemy.orm import selectinload
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: tests.services lives beside bench/

from bench.support import PETS, prepare, server_env, token_for  # noqa: E402
from petstore import db  # noqa: E402
from petstore.api.pets import apply_body  # noqa: E402
from petstore.config import Settings  # noqa: E402
from petstore.models import Category, Pet, PetBody, PetPublic, PetStatus, Tag  # noqa: E402
from tests.services import UvicornServer  # noqa: E402

UVICORN = [sys.executable, "-m", "uvicorn", "--host", "{host}", "--port", "{port}", "--no-access-log"]
UVICORN += ["--log-level", "warning"]
NEW_PET = {
    "name": "Benchmarked",
    "category": {"name": "Dogs"},
    "photoUrls": [],
    "tags": [{"name": "bench"}],
    "status": "sold",  # keeps findByStatus (available) at exactly 100 pets during the run
}


# ------------------------------------------------------------------------------ the baseline


def bare_app() -> Starlette:
    """The same JSON from the same database, with nothing around it (uvicorn --factory)."""
    settings = Settings(database_url=os.environ["PETSTORE_DATABASE_URL"], plugins=())
    engine = db.create_engine(settings)
    sessions = db.create_sessionmaker(engine)
    relations = (selectinload(Pet.category), selectinload(Pet.tags))  # type: ignore[arg-type]

    def dump(pet: Pet) -> dict[str, object]:
        return PetPublic.model_validate(pet, from_attributes=True).model_dump(mode="json", by_alias=True)

    async def get_pet(request: Request) -> Response:
        query = select(Pet).options(*relations).where(Pet.id == int(request.path_params["petId"]))  # type: ignore[arg-type]
        async with sessions() as session:
            pet = (await session.execute(query)).scalar_one_or_none()
            if pet is None:
                return JSONResponse({"code": 404, "type": "not_found", "message": "no such pet"}, status_code=404)
            return JSONResponse(dump(pet))

    async def find_by_status(request: Request) -> Response:
        statuses = request.query_params.get("status", "available").split(",")
        query = select(Pet).options(*relations).where(Pet.status.in_(statuses)).order_by(Pet.id).limit(100)  # type: ignore[attr-defined,arg-type]
        async with sessions() as session:
            return JSONResponse([dump(pet) for pet in (await session.execute(query)).scalars().all()])

    async def add_pet(request: Request) -> Response:
        body = PetBody.model_validate_json(await request.body())
        async with sessions() as session:
            pet = Pet(name=body.name, tags=[])
            session.add(pet)
            await apply_body(session, pet, body)
            await session.commit()
            return JSONResponse(dump(pet))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    return Starlette(
        routes=[
            Route("/api/v3/pet/findByStatus", find_by_status, methods=["GET"]),
            Route("/api/v3/pet/{petId}", get_pet, methods=["GET"]),
            Route("/api/v3/pet", add_pet, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


# -------------------------------------------------------------- FastAPI, as its documentation shows
# SQLModel's FastAPI tutorial: a sync engine, a session per request from a yielding `Depends`
# dependency, plain `def` path operations (FastAPI runs them in its threadpool), `response_model=`
# the public model. The engine lives in app.state, not in a global, so the routes sit on a module
# router whose annotations FastAPI can resolve (this module postpones them).


def get_session(request: Request) -> Iterator[sqlmodel.Session]:
    with sqlmodel.Session(request.app.state.engine) as session:
        yield session


SessionDep = Annotated[sqlmodel.Session, Depends(get_session)]
router = APIRouter(prefix="/api/v3")
# The departure from the tutorial's lazy loading: Pet's relationships are lazy="raise", so they are
# loaded with the pet (selectinload, as the bare app loads them) instead of on first access.
PET_RELATIONS = (selectinload(Pet.category), selectinload(Pet.tags))  # type: ignore[arg-type]


@router.get("/pet/findByStatus", response_model=list[PetPublic])
def find_pets_by_status(session: SessionDep, status: str = "available") -> list[Pet]:
    query = sqlmodel.select(Pet).options(*PET_RELATIONS).where(sqlmodel.col(Pet.status).in_(status.split(",")))
    return list(session.exec(query.order_by(sqlmodel.col(Pet.id)).limit(100)).all())


@router.get("/pet/{pet_id}", response_model=PetPublic)
def read_pet(pet_id: int, session: SessionDep) -> Pet:
    pet = session.get(Pet, pet_id, options=PET_RELATIONS)
    if not pet:
        raise HTTPException(status_code=404, detail="Pet not found")
    return pet


_Named = TypeVar("_Named", Category, Tag)


def named(session: sqlmodel.Session, model: type[_Named], name: str) -> _Named:
    """The category or tag of that name, made if missing (a body's ids are not looked up: the
    benchmark's names its category and tags)."""
    found = session.exec(sqlmodel.select(model).where(model.name == name)).first()
    return found or model(name=name)


@router.post("/pet", response_model=PetPublic)
def add_pet(body: PetBody, session: SessionDep) -> Pet:
    category = named(session, Category, body.category.name) if body.category and body.category.name else None
    tags = [named(session, Tag, name) for name in dict.fromkeys(tag.name for tag in body.tags if tag.name)]
    update = {"category": category, "tags": tags, "status": body.status or PetStatus.available}
    pet = Pet.model_validate(body, update=update)
    session.add(pet)
    session.commit()
    session.refresh(pet)
    session.refresh(pet, ["category", "tags"])  # what lazy loading would read for the answer, were it allowed
    return pet


def fastapi_app() -> FastAPI:
    """The FastAPI + SQLModel app, on the same database (uvicorn --factory): SQLite through
    ``sqlite3``, PostgreSQL through psycopg, the sync drivers its tutorial uses."""
    url = make_url(os.environ["PETSTORE_DATABASE_URL"])
    if url.get_backend_name() == "postgresql":
        engine = sqlmodel.create_engine(url.set(drivername="postgresql+psycopg"))
    else:
        engine = sqlmodel.create_engine(url.set(drivername="sqlite"), connect_args={"check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The petstore engine's (petstore.db.create_engine), not the tutorial's: without them each
            # POST would wait for an fsync the other two servers do not, and skip the foreign key checks.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.engine = engine
        yield
        engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    return app


# ------------------------------------------------------------------------------------ wrk


@dataclass
class Result:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency(output: str, percentile: str) -> float:
    found = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no {percentile}% latency in wrk output:\n{output}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def wrk(url: str, script: str, *, connections: int, duration: int) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        argv = [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            lua.name,
            url,
        ]
        output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    if rate is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{output}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = int(bad.group(1)) if bad else 0
    errors += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return Result(float(rate.group(1)), _latency(output, "50"), _latency(output, "99"), errors)


def combine(rounds: list[Result]) -> Result:
    """Rounds of equal length: mean rate, median latencies, all errors."""
    return Result(
        requests_per_second=statistics.fmean(r.requests_per_second for r in rounds),
        p50_ms=statistics.median(r.p50_ms for r in rounds),
        p99_ms=statistics.median(r.p99_ms for r in rounds),
        errors=sum(r.errors for r in rounds),
    )


def get_by_id_script() -> str:
    return f'request = function() return wrk.format("GET", "/api/v3/pet/" .. math.random(1, {PETS})) end\n'


def get_script(path: str) -> str:
    return f'request = function() return wrk.format("GET", "{path}") end\n'


def post_script(token: str | None) -> str:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    lua_headers = ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items())
    body = json.dumps(NEW_PET).replace("\\", "\\\\").replace('"', '\\"')
    return f'request = function() return wrk.format("POST", "/api/v3/pet", {{{lua_headers}}}, "{body}") end\n'


# ---------------------------------------------------------------------------- the search

#: The searches measured: each order and filter; a part of a name that many pets have, that few have, that none has.
SEARCHES: tuple[tuple[str, dict[str, str]], ...] = (
    ("no filter", {}),
    ("sort=-name", {"sort": "-name"}),
    ("status=sold", {"status": "sold"}),
    ("category=Fish", {"category": "Fish"}),
    ("tag=calm", {"tag": "calm"}),
    ("q=rex (many)", {"q": "rex"}),
    ("q=4242 (few)", {"q": "4242"}),
    ("q=zzz (none)", {"q": "zzz"}),
    ("q=rex&sort=name", {"q": "rex", "sort": "name"}),
)


async def prepare_search(database_url: str, pets: int) -> None:
    """Migrate, then ``pets`` pets as ``petstore seed`` makes them, inserted in bulk (the API would take long)."""
    import random

    from petstore.migrations import migrate
    from petstore.seed import CATEGORIES, STATUS_WEIGHTS, TAGS

    await asyncio.to_thread(migrate, database_url)
    engine = db.create_engine(Settings(database_url=database_url, plugins=()))
    rng = random.Random(15)
    categories = list(CATEGORIES)
    try:
        async with engine.begin() as conn:
            rows = [{"id": n + 1, "name": name} for n, name in enumerate(categories)]
            await conn.execute(text("INSERT INTO category (id, name) VALUES (:id, :name)"), rows)
            rows = [{"id": n + 1, "name": name} for n, name in enumerate(TAGS)]
            await conn.execute(text("INSERT INTO tag (id, name) VALUES (:id, :name)"), rows)
            for start in range(0, pets, 5000):
                batch, links = [], []
                for number in range(start + 1, min(pets, start + 5000) + 1):
                    category = rng.randrange(len(categories))
                    status = rng.choices(list(STATUS_WEIGHTS), weights=list(STATUS_WEIGHTS.values()))[0]
                    name = f"{rng.choice(CATEGORIES[categories[category]])} {number}"
                    batch.append({"id": number, "name": name, "status": status.value, "category": category + 1})
                    links += [
                        {"pet": number, "tag": tag + 1} for tag in rng.sample(range(len(TAGS)), rng.randint(1, 3))
                    ]
                insert = "INSERT INTO pet (id, name, status, category_id, photo_urls) VALUES (:id, :name, :status, :category, '[]')"  # noqa: E501
                await conn.execute(text(insert), batch)
                await conn.execute(text("INSERT INTO pet_tag (pet_id, tag_id) VALUES (:pet, :tag)"), links)
            if database_url.startswith("postgresql"):
                await conn.execute(text("SELECT setval(pg_get_serial_sequence('pet', 'id'), :n)"), {"n": pets})
        async with engine.connect() as conn:  # the planners' statistics, as autovacuum would keep them
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE" if database_url.startswith("postgresql") else "ANALYZE"))
    finally:
        await engine.dispose()


def deep_cursor(url: str, params: dict[str, str]) -> str | None:
    """The cursor of a page half way through the matches of ``params`` (None if there is one page)."""
    from urllib.parse import parse_qs, urlparse

    first = httpx.get(f"{url}/api/v3/pet/search", params=params | {"limit": "1"}, timeout=60).json()
    half = min(first["total"], 50_000) // 2
    if half < 2:
        return None
    page = httpx.get(f"{url}/api/v3/pet/search", params=params | {"limit": "1000"}, timeout=60)
    cursor = page.json()["next"]
    for _ in range(half // 1000 - 1):  # follow the pages to the middle, as a client would
        if cursor is None:
            return None
        page = httpx.get(f"{url}/api/v3/pet/search", params=params | {"limit": "1000", "cursor": cursor}, timeout=60)
        cursor = page.json()["next"]
    if cursor is None:
        return None
    return str(parse_qs(urlparse(page.headers["link"][1:].split(">", 1)[0]).query)["cursor"][0])


def search_main(args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    if args.database_url and len(args.sizes) > 1:
        raise SystemExit("bench: --database-url holds one size: give --sizes one number with it")
    per_round = max(1, args.duration // args.rounds)
    rows: list[tuple[int, str, str, Result, int]] = []
    for size in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix="petstore-bench-search-"))
        database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        try:
            asyncio.run(prepare_search(database_url, size))
            env = server_env(database_url, workdir)
            with UvicornServer(
                command=[*UVICORN, "--factory", "petstore.app:create_app"], env=env, cwd=workdir
            ) as full:
                for name, params in SEARCHES:
                    total = httpx.get(f"{full.url}/api/v3/pet/search", params=params, timeout=60).json()["total"]
                    pages = [("first", params)]
                    cursor = deep_cursor(full.url, params)
                    if cursor is not None:
                        pages.append(("deep", params | {"cursor": cursor}))
                    for where, query in pages:
                        script = get_script("/api/v3/pet/search?" + urlencode(query))
                        wrk(full.url, script, connections=args.connections, duration=1)  # warm
                        result = combine(
                            [
                                wrk(full.url, script, connections=args.connections, duration=per_round)
                                for _ in range(args.rounds)
                            ]
                        )
                        rows.append((size, name, where, result, total))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nGET /api/v3/pet/search (limit 100), default plugins, {args.connections} connections, "
        f"{args.rounds} rounds of {per_round} s, database {(args.database_url or 'sqlite').split(':', 1)[0]}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print("| pets | search | page | matches | req/s | p50 ms | p99 ms | errors |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for size, name, where, result, total in rows:
        print(
            f"| {size:,} | {name} | {where} | {total:,} | {result.requests_per_second:,.0f} | "
            f"{result.p50_ms:.1f} | {result.p99_ms:.1f} | {result.errors} |"
        )
    return 0


# ----------------------------------------------------------------------------------- main


@dataclass
class Row:
    scenario: str
    target: float  # the issue's: petstore req/s at least this many times each other server's
    results: dict[str, Result]  # by server, in SERVERS' order


SERVERS = ("petstore", "bare", "FastAPI")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario and server (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds the duration is split into")
    parser.add_argument("--connections", type=int, default=50, help="concurrent connections (default 50)")
    parser.add_argument("--database-url", help="an empty database to use (default: a new SQLite file)")
    parser.add_argument("--plot", type=Path, help="a PNG of req/s (p99 on each bar) to write (default: none)")
    parser.add_argument("--search", action="store_true", help="measure GET /pet/search at each of --sizes instead")
    parser.add_argument(
        "--sizes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[100, 100_000],
        help="pets in the database, for --search (default 100,100000)",
    )
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    if args.search:
        return search_main(args)

    per_round = max(1, args.duration // args.rounds)
    workdir = Path(tempfile.mkdtemp(prefix="petstore-bench-"))
    database_url = args.database_url or f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    database = database_url.split(":", 1)[0]
    asyncio.run(prepare(database_url))
    env = server_env(database_url, workdir)
    servers = {
        "petstore": UvicornServer(command=[*UVICORN, "--factory", "petstore.app:create_app"], env=env, cwd=workdir),
        "bare": UvicornServer(
            command=[*UVICORN, "--factory", "bench.rest:bare_app"], env=env, cwd=workdir, health_path="/api/v3/pet/1"
        ),
    }
    servers["FastAPI"] = UvicornServer(
        command=[*UVICORN, "--factory", "bench.rest:fastapi_app"], env=env, cwd=workdir, health_path="/api/v3/pet/1"
    )
    scenarios = [  # (name, wrk script; None for POST, whose script needs the token; target)
        ("GET /pet/{petId}", get_by_id_script(), 3.0),
        ("GET /pet/findByStatus (100 pets)", get_script("/api/v3/pet/findByStatus"), 5.0),
        ("POST /pet", None, 1.5),
    ]
    rows: list[Row] = []
    try:
        with contextlib.ExitStack() as running:
            for server in servers.values():
                running.enter_context(server)
            token = token_for(servers["petstore"])
            for path in ("/api/v3/pet/1", "/api/v3/pet/findByStatus"):
                # The comparison is fair only if all answer the same JSON.
                answers = {label: httpx.get(server.url + path).json() for label, server in servers.items()}
                if any(answer != answers["petstore"] for answer in answers.values()):
                    raise SystemExit(f"bench: the servers answer {path} differently")
            for name, script, target in scenarios:
                scripts = {label: script or post_script(token if label == "petstore" else None) for label in servers}
                for label, server in servers.items():  # warm each (imports, caches, connection pools) first
                    wrk(server.url, scripts[label], connections=args.connections, duration=2)
                # Alternate short rounds, so that whatever else the machine does weighs on all alike.
                rounds: dict[str, list[Result]] = {label: [] for label in servers}
                for _ in range(args.rounds):
                    for label, server in servers.items():
                        result = wrk(server.url, scripts[label], connections=args.connections, duration=per_round)
                        rounds[label].append(result)
                rows.append(Row(name, target, {label: combine(results) for label, results in rounds.items()}))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    title = (
        f"{args.connections} connections, {args.rounds} alternating rounds of {per_round} s per server, "
        f"database {database}, {os.cpu_count()} CPUs"
    )
    print(f"\n{title}\n")
    print(table(rows))
    missed = [row.scenario for row in rows if not met(row)]
    others = " and ".join(f"{server}'s" for server in SERVERS[1:] if server in servers)
    verdict = "met" if not missed else "NOT met: " + ", ".join(missed)
    print(f"\ntargets (petstore req/s >= the target times {others}): {verdict}")
    if args.plot:
        plot(rows, args.plot, title)
        print(f"plot: {args.plot}")
    return 0


def ratio(row: Row, server: str) -> float | None:
    other = row.results.get(server)
    return row.results["petstore"].requests_per_second / other.requests_per_second if other else None


def met(row: Row) -> bool:
    return all(r >= row.target for r in (ratio(row, "bare"), ratio(row, "FastAPI")) if r is not None)


def table(rows: list[Row]) -> str:
    lines = [
        "| scenario | petstore req/s | p99 ms | bare req/s | p99 ms | FastAPI req/s | p99 ms "
        "| petstore/bare | petstore/FastAPI | target | errors (p/b/F) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for row in rows:
        cells = [row.scenario]
        for server in SERVERS:
            result = row.results.get(server)
            cells += [f"{result.requests_per_second:,.0f}", f"{result.p99_ms:.1f}"] if result else ["—", "—"]
        cells += [f"{r:.2f}x" if r is not None else "—" for r in (ratio(row, "bare"), ratio(row, "FastAPI"))]
        cells.append(f">= {row.target:g}x: {'met' if met(row) else 'NOT met'}")
        cells.append("/".join(str(row.results[s].errors) if s in row.results else "—" for s in SERVERS))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # a file, no display
    import matplotlib.pyplot as plt

    servers = [server for server in SERVERS if server in rows[0].results]
    width = 0.8 / len(servers)
    fig, axes = plt.subplots(figsize=(9, 4.8), dpi=120)
    for n, server in enumerate(servers):
        results = [row.results[server] for row in rows]
        xs = [x + (n - (len(servers) - 1) / 2) * width for x in range(len(rows))]
        bars = axes.bar(xs, [r.requests_per_second for r in results], width, label=server)
        axes.bar_label(bars, labels=[f"p99\n{r.p99_ms:.1f} ms" for r in results], fontsize=7, padding=2)
    axes.set_xticks(range(len(rows)), [row.scenario for row in rows], fontsize=8)
    axes.set_ylabel("requests/s")
    axes.margins(y=0.15)  # room for the labels above the tallest bar
    axes.legend(fontsize=8)
    axes.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
