"""SQLite on the event loop's own thread, for SQLAlchemy's ``sqlite+aiosqlite`` dialect.

aiosqlite runs every call (cursor, execute, fetch, close, commit) in a thread of its own and
wakes the loop with the answer: about 20 round trips between threads for a pet change and its
relay pass, which cost far more CPU than the SQLite work they carry (a keyed lookup takes
microseconds). This module gives the dialect, through ``create_async_engine(async_creator=...)``,
an object with aiosqlite's interface that runs the same calls at once on the loop's thread.

Waiting for a lock must not block that thread: the connection that holds the lock runs on it
too. So SQLite's own busy timeout is 0 and a statement that finds the database locked
(``SQLITE_BUSY``) is retried after an ``await asyncio.sleep`` with backoff, up to the timeout
the URL or ``connect_args`` give (as SQLite's busy handler would, without holding the loop).
``SQLITE_BUSY_SNAPSHOT`` is raised at once, as SQLite does: the transaction must start over.

The price: a query runs on the loop, so a long one (a scan of a big table) delays everything
else meanwhile. SQLite is the development and single-process database; production runs
PostgreSQL (``Settings.production_problems`` insists).

SQLAlchemy's adapter (``AsyncAdapt_aiosqlite_connection``) reads, besides aiosqlite's API, three
private attributes of an ``aiosqlite.Connection``, which :class:`Connection` therefore has too:
``_conn`` (the ``sqlite3`` connection) and ``_tx`` (the queue of aiosqlite's thread), to set the
isolation level, and ``_connection`` (None once closed), before each commit and rollback. They
are in :data:`USES`, checked at the first connection (:mod:`petstore.internals`): a SQLAlchemy
that reads another private attribute refuses to connect, naming it, instead of failing somewhere
in a query. This module is the only one that knows them.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection

from petstore import internals

T = TypeVar("T")

#: SQLite's plain "database is locked" and "locked while recovering the WAL": worth a retry.
_RETRY = frozenset({sqlite3.SQLITE_BUSY, 261})  # 261: SQLITE_BUSY_RECOVERY
_FIRST_PAUSE = 0.001
_LONGEST_PAUSE = 0.05


class Connection:
    """What SQLAlchemy's aiosqlite adapter uses of ``aiosqlite.Connection``, run inline."""

    def __init__(self, conn: sqlite3.Connection, busy_timeout: float) -> None:
        # aiosqlite's private names, because SQLAlchemy's adapter reads them (USES, module docstring):
        self._conn = conn
        #: None once closed.
        self._connection: sqlite3.Connection | None = conn
        self._tx = _Inline()
        self.busy_timeout = busy_timeout

    async def retrying(self, call: Callable[[], T]) -> T:
        """``call()``, again after a pause while the database is locked, until the busy timeout."""
        deadline = None
        pause = _FIRST_PAUSE
        while True:
            try:
                return call()
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode not in _RETRY:
                    raise
                now = time.monotonic()
                deadline = deadline or now + self.busy_timeout
                if now >= deadline:
                    raise
                await asyncio.sleep(min(pause, deadline - now))
                pause = min(pause * 2, _LONGEST_PAUSE)

    @property
    def sqlite_connection(self) -> sqlite3.Connection | None:
        """The ``sqlite3`` connection, while this one is open (petstore's own use; ``_connection`` is SQLAlchemy's)."""
        return self._connection

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> Cursor:
        return Cursor(self, self._conn.cursor())

    async def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        cursor = self.cursor()
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        await self.retrying(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        """Close now (the adapter's forced termination)."""
        if self._connection is not None:
            self._connection = None
            self._conn.close()


class Cursor:
    """What the adapter uses of ``aiosqlite.Cursor``, run inline."""

    def __init__(self, connection: Connection, cursor: sqlite3.Cursor) -> None:
        self._connection = connection
        self._cursor = cursor

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        await self._connection.retrying(lambda: self._cursor.execute(sql, parameters))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> Cursor:
        rows = list(parameters)  # a retry needs them again
        await self._connection.retrying(lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> Sequence[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class _Inline:
    """The adapter sets the isolation level by posting ``(future, function)`` to aiosqlite's
    thread queue; here the function runs at once."""

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # handed to the awaiting adapter, as aiosqlite does
            future.set_exception(exc)


#: The private attributes of aiosqlite's connection that SQLAlchemy's adapter reads (module docstring).
USES = (
    internals.Uses(
        __name__,
        "SQLAlchemy",
        Connection,
        ("_conn", "_tx", "_connection"),
        reader=AsyncAdapt_aiosqlite_connection,
        via="_connection",
    ),
)


def connect_url(dialect: Any, url: Any) -> Connection:
    """A connection to the database of a ``sqlite+aiosqlite`` URL, as the engine opens its own
    (``?timeout=seconds`` in the URL sets the busy timeout; 30 s without)."""
    args, kwargs = dialect.create_connect_args(url)
    return connect(args, {"timeout": 30, **kwargs})


def connect(args: Sequence[Any], kwargs: dict[str, Any]) -> Connection:
    """A connection from the arguments the dialect would give ``aiosqlite.connect``.

    Raises :class:`~petstore.internals.InternalsChanged` if the installed SQLAlchemy's adapter
    reads what :class:`Connection` lacks (checked once)."""
    for uses in USES:
        uses.check()
    options = dict(kwargs)
    busy_timeout = float(options.pop("timeout", 5.0))
    options.pop("iter_chunk_size", None)
    options["check_same_thread"] = False  # the pool may close it from a garbage collector's thread
    options["timeout"] = 0  # locks are waited for in Connection.retrying, without holding the loop
    conn: sqlite3.Connection = sqlite3.connect(*args, **options)
    return Connection(conn, busy_timeout)
