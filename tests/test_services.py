"""The service helpers start the real programs, and stop and restart them as the suite relies on."""

from __future__ import annotations

import json
import os
import pwd
import socket
import sys
import textwrap
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio
import redis.exceptions
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.services import (
    PG_USER,
    PostgresServer,
    PrometheusServer,
    RedisServer,
    ServiceError,
    UvicornServer,
    free_port,
    http_get,
    wait_until,
)

#: Starts servers or tools as subprocesses: not in the fast lane (scripts/test --fast).
pytestmark = pytest.mark.process


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------ helpers


def test_free_port_can_be_bound_on_loopback() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_wait_until_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "ready"])
    assert wait_until(lambda: next(answers), timeout=5, what="an answer", interval=0) == "ready"


def test_wait_until_names_what_it_waited_for_on_timeout() -> None:
    with pytest.raises(TimeoutError, match="the impossible"):
        wait_until(lambda: False, timeout=0.1, what="the impossible")


def test_a_missing_program_says_to_run_scripts_test() -> None:
    with pytest.raises(ServiceError, match="run scripts/test"):
        RedisServer(binary="petstore-no-such-redis-server")


# -------------------------------------------------------------------------------------- Redis


@pytest.mark.redis
async def test_redis_url_serves_set_and_get(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.set("pet:1", "doggie")
        assert await client.get("pet:1") == b"doggie"
    finally:
        await client.aclose()


@pytest.mark.redis
@pytest.mark.parametrize("run", [1, 2])
def test_redis_url_starts_every_test_empty(redis_server: RedisServer, redis_url: str, run: int) -> None:
    """The same key is written by both runs: the second finds it gone because the fixture flushed it."""
    assert redis_server.command("DBSIZE") == b"0"
    assert redis_server.command("SET", "only-once", str(run), "NX") == b"OK"


@pytest.mark.redis
def test_redis_restarts_on_the_same_port_without_data_or_files() -> None:
    with RedisServer() as server:
        port = server.port
        server.command("SET", "key", "value")
        server.stop()
        assert not server.running
        assert not accepts_connections(port)

        server.start()
        assert server.port == port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        # No persistence: a restart begins empty, and nothing but the log is written to disk.
        assert server.command("GET", "key") is None
        assert sorted(path.name for path in server.workdir.iterdir()) == ["redis.log"]
        workdir = server.workdir
    assert not workdir.exists()


@pytest.mark.redis
async def test_a_client_recovers_when_a_killed_redis_is_started_again() -> None:
    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
        try:
            assert await client.ping()
            server.kill()
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
            server.start()
            assert await client.ping()
        finally:
            await client.aclose()


# ---------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
async def test_pg_url_connects_with_asyncpg(pg_url: str) -> None:
    assert pg_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    connection = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await connection.fetchval("SELECT 1") == 1
        assert await connection.fetchval("SELECT current_database()") == pg_url.rsplit("/", 1)[1]
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_pg_url_works_with_the_sqlalchemy_async_engine(pg_url: str) -> None:
    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_each_created_database_is_separate_and_empty(postgres_server: PostgresServer) -> None:
    first, second = postgres_server.create_database(), postgres_server.create_database()
    assert first != second
    try:
        connection = await asyncpg.connect(postgres_server.dsn(first))
        try:
            await connection.execute("CREATE TABLE pet (id integer)")
        finally:
            await connection.close()
        connection = await asyncpg.connect(postgres_server.dsn(second))
        try:
            assert await connection.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'pet'") == 0
        finally:
            await connection.close()
    finally:
        postgres_server.drop_database(first)
        postgres_server.drop_database(second)
    assert postgres_server.psql(f"SELECT count(*) FROM pg_database WHERE datname IN ('{first}', '{second}')") == "0"


@pytest.mark.postgres
def test_postgres_runs_unprivileged_and_listens_on_loopback_only(postgres_server: PostgresServer) -> None:
    postmaster_pid = int((postgres_server.data / "postmaster.pid").read_text().split()[0])
    owner = os.stat(f"/proc/{postmaster_pid}").st_uid
    assert owner == (pwd.getpwnam(PG_USER).pw_uid if os.geteuid() == 0 else os.geteuid())
    assert owner != 0
    assert postgres_server.psql("SHOW listen_addresses") == "127.0.0.1"
    assert postgres_server.psql("SHOW fsync") == "off"


# ---------------------------------------------------------------------------------- Prometheus


@pytest.mark.prometheus
def test_prometheus_scrapes_and_answers_queries(prometheus_bin: str) -> None:
    port = free_port()
    config = textwrap.dedent(f"""
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: self
            static_configs:
              - targets: ["127.0.0.1:{port}"]
    """)
    with PrometheusServer(config, port=port, binary=prometheus_bin) as prometheus:
        assert prometheus.query("1 + 1")[0]["value"][1] == "2"
        up = wait_until(lambda: prometheus.query('up{job="self"}'), timeout=30, what="a first scrape of itself")
        assert up[0]["value"][1] == "1"


# ------------------------------------------------------------------------------------- uvicorn

ASGI_APP = """
import json, os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    if scope["path"] == "/healthz":
        body = b"ok"
    else:
        env = {key: value for key, value in os.environ.items() if key.startswith("PETSTORE_")}
        body = json.dumps({"pid": os.getpid(), "env": env}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


def asgi_command(app_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "app:app",
        "--app-dir",
        str(app_dir),
        "--host",
        "{host}",
        "--port",
        "{port}",
    ]


def whoami(server: UvicornServer) -> dict[str, object]:
    status, body = http_get(f"{server.url}/whoami")
    assert status == 200
    answer: dict[str, object] = json.loads(body)
    return answer


def test_uvicorn_serves_with_exactly_the_given_petstore_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "app.py").write_text(ASGI_APP)
    monkeypatch.setenv("PETSTORE_FROM_MY_SHELL", "must not leak")
    with UvicornServer(env={"PETSTORE_ENV": "test"}, command=asgi_command(tmp_path)) as server:
        assert whoami(server)["env"] == {"PETSTORE_ENV": "test"}
        assert "Uvicorn running on" in server.log_path.read_text()


def test_uvicorn_restarts_and_recovers_from_a_kill_on_the_same_port(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(ASGI_APP)
    with UvicornServer(command=asgi_command(tmp_path)) as server:
        port, first_pid = server.port, whoami(server)["pid"]

        server.restart()
        second_pid = whoami(server)["pid"]
        assert (server.port, second_pid != first_pid) == (port, True)

        server.kill()
        assert not server.running
        assert not accepts_connections(port)
        server.start()
        assert server.port == port
        assert whoami(server)["pid"] not in (first_pid, second_pid)


def test_uvicorn_start_failure_reports_the_log_tail(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text('raise RuntimeError("the app is broken on purpose")\n')
    server = UvicornServer(command=asgi_command(tmp_path))
    try:
        with pytest.raises(ServiceError, match="the app is broken on purpose"):
            server.start()
        assert not server.running
    finally:
        server.close()


def test_uvicorn_runs_the_petstore_app_factory_by_default(tmp_path: Path) -> None:
    env = {"PETSTORE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}", "PETSTORE_PLUGINS": ""}
    with UvicornServer(env=env, cwd=tmp_path) as server:
        assert "petstore.app:create_app" in server.command
        assert http_get(f"{server.url}/healthz")[0] == 200
