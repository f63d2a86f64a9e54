"""Fixtures shared by the whole suite, one section per concern.

Add a fixture under the section it belongs to, or open a new section with the same kind of
header; keep each section's imports beside the others at the top.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from playwright.sync_api import Browser, Error, sync_playwright

from tests.fakes import ApiHarness, running_api
from tests.services import PG_BINDIR, PostgresServer, RedisServer

# ------------------------------------------------------------------------------ the fast lane
# ``scripts/test --fast`` sets PETSTORE_FAST=1: only the tests that run inside this process on
# SQLite and the in-process broker are collected. A test is out of it when it carries a mark
# of something outside the process (pyproject.toml's markers) or asks for a fixture that starts
# a real service. The full suite, what CI runs, is every test.

OUTSIDE_MARKS = frozenset({"redis", "postgres", "browser", "prometheus", "process"})
OUTSIDE_FIXTURES = frozenset({"redis_server", "redis_url", "postgres_server", "pg_url", "prometheus_bin", "chromium"})


def in_fast_lane(item: pytest.Item) -> bool:
    marks = {mark.name for mark in item.iter_markers()}
    return not (marks & OUTSIDE_MARKS or OUTSIDE_FIXTURES & set(getattr(item, "fixturenames", ())))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PETSTORE_FAST") != "1":
        return
    kept = [item for item in items if in_fast_lane(item)]
    left = [item for item in items if not in_fast_lane(item)]
    if left:
        config.hook.pytest_deselected(items=left)
    items[:] = kept


# ------------------------------------------------------------------------------ real services
# Real Redis and PostgreSQL, one of each per test session, started on free loopback ports and
# stopped at the end of the session. A missing program FAILS the test that needs it, with the
# command that installs it: CI must never pass by leaving a service out.


def _missing(what: str) -> NoReturn:
    pytest.fail(f"{what} is not installed: run scripts/test, which installs everything the tests need", pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's Redis; a test may stop, kill and restart it (the next `redis_url` restarts it if needed)."""
    if shutil.which("redis-server") is None:
        _missing("redis-server (Debian package redis-server)")
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """`redis://127.0.0.1:PORT/0` of a running, empty Redis."""
    if not redis_server.running:
        redis_server.start()  # an earlier test stopped or killed it and did not bring it back
    redis_server.flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL 15 cluster; use `pg_url` for a database of your own."""
    if not (PG_BINDIR / "initdb").exists():
        _missing(f"PostgreSQL 15 ({PG_BINDIR}/initdb, Debian package postgresql-15)")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """`postgresql+asyncpg://...` of a fresh, empty database, dropped after the test."""
    if not postgres_server.running:
        postgres_server.start()
    name = postgres_server.create_database()
    yield postgres_server.async_url(name)
    postgres_server.drop_database(name)  # WITH (FORCE): connections a test leaked do not block it


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    """Path of Debian's `prometheus`, for `tests.services.PrometheusServer(..., binary=prometheus_bin)`."""
    path = shutil.which("prometheus")
    if path is None:
        _missing("prometheus (Debian package prometheus)")
    return path


# ------------------------------------------------------------------------------ app fixtures
# The REST API under test with the header auth fake of tests/fakes.py, on SQLite AND on a fresh
# PostgreSQL database: every test that takes `api` (or `db_url`) runs once against each.


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file in tmp_path, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'petstore.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[ApiHarness]:
    """The started app (tables created, header auth fake loaded) and views of its database."""
    with running_api(db_url, tmp_path / "media") as harness:
        yield harness


# ---------------------------------------------------------------------------------- Chromium

#: Debian's Chromium, headless; the flags keep it off a network this machine does not have.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Error as exc:
            pytest.fail(f"cannot start {CHROMIUM} (Debian package chromium; scripts/test installs it): {exc}")
        yield browser
        browser.close()
