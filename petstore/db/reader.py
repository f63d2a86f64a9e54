"""The REST reads' queries, run on SQLite without the pool, the connection and the result machinery.

A Core query run through the async engine costs, on SQLite, twenty times what SQLite takes to
answer it (about 0.45 ms against 0.02 ms for a pet by id, measured side by side): a pool
checkout, two greenlet switches, the execution context, the result, and the close, which
SQLAlchemy's async context managers run in a task of their own one loop turn later. The hot
reads (:mod:`petstore.db.answers`) need none of it: one statement that returns one column.

So on a SQLite file, :class:`Reader` keeps one ``query_only`` connection of its own, on the
loop's thread as petstore's SQLite always is (:mod:`petstore.db.sqlite`), compiles each query
once for the engine's dialect and runs it with ``sqlite3`` directly. Each read is one
autocommit statement, so it sees every transaction committed before it began, from this
process or any other on the file (WAL): never staler than through the engine. A locked
database is waited for as the engine's connections wait (``Connection.retrying``).

On PostgreSQL the same holds through asyncpg: the reader keeps a small pool of its own
(:data:`PG_POOL_SIZE` connections, made from the engine's URL as the engine's are) and runs each
compiled query there, a prepared statement per connection (asyncpg's cache), in autocommit: 0.78
against 1.49 ms a read through the engine, measured side by side. Its errors are the engine's:
a lost connection or a refused one is an ``OperationalError``, so an outage answers 503 as any
other read does.

An in-memory SQLite database, which another connection would not see, is read through the engine.

:meth:`Reader.kept` keeps answers that are dear to compute and change only when the data does
(the search's count of matches) while they still hold, which the database's *version*,
read first, tells for a few microseconds:

- On a SQLite file, ``PRAGMA data_version`` on the reader's own connection, which never writes:
  it changes whenever any other connection, of this process or another, commits.
- On PostgreSQL, :mod:`petstore.db.pet_version`: a count of the committed transactions that
  changed pets, in the order they became visible. (The WAL position would not do: a transaction
  becomes visible a moment *after* its commit record moves it.) An answer is kept only if the
  statement that computed it saw that same count in its own snapshot.
- Elsewhere (an in-memory SQLite database, a PostgreSQL database before revision 0006) nothing
  is kept.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, TypeVar

from sqlalchemy import URL, Select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from petstore.db import pet_version, sqlite
from petstore.errors import database_unavailable

T = TypeVar("T")

logger = logging.getLogger("petstore.db.reader")

#: How many answers :meth:`Reader.kept` keeps at most (the least recently used go first).
KEPT = 256
#: And how large they may be together, in the ``size`` :meth:`Reader.kept` is told (rows: the
#: search's keys in name order take about 160 bytes a row for a name of a dozen characters, 16 MB
#: for all 100,000 measured, and up to twice that for names of 255).
KEPT_SIZE = 100_000
#: The reader's own PostgreSQL connections, beside the engine's pool (10 + 20 overflow): a read
#: holds one for one statement, so a few serve every request in flight.
PG_POOL_SIZE = 4


def in_memory(url: URL) -> bool:
    """Whether a SQLite URL names an in-memory database (one that only its own connection sees)."""
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


class Reader:
    """Runs read-only queries of one column for an app: ``await reader.column(query, {...})``."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._inline = engine.dialect.name == "sqlite" and not in_memory(engine.url)
        self._postgres = engine.dialect.name == "postgresql"
        self._versioned: bool | None = None  # on PostgreSQL: whether the database has pet_version
        self._connection: sqlite.Connection | None = None
        self._pool: asyncio.Future[Any] | None = None  # an asyncpg.Pool, made on the first read
        #: query -> (its SQL, the names of its parameters in order, their defaults)
        self._compiled: dict[Select[Any], tuple[str, tuple[str, ...], Mapping[str, Any]]] = {}
        #: What :meth:`kept` keeps, and the database's version it holds for.
        self._kept: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()  # key -> (answer, its size)
        self._kept_size = 0
        self._kept_at: tuple[int, int] | None = None
        #: Counts the reader's connections: a version belongs to the connection that read it.
        self._opened = 0

    async def column(self, query: Select[Any], parameters: Mapping[str, Any]) -> list[Any]:
        """The first column of ``query``'s rows.

        Inline, parameters go to ``sqlite3`` as they are: ints and strings (no SQLAlchemy type
        processes them on this path). A query with an ``expanding`` (IN list) parameter, which
        only SQLAlchemy's execution can expand, goes through the engine."""
        return [row[0] for row in await self.rows(query, parameters)]

    async def rows(self, query: Select[Any], parameters: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """``query``'s rows, as tuples, its columns' values as the driver gives them (see :meth:`column`)."""
        own = self._inline or self._postgres
        compiled = self._compiled.get(query) if own else None
        if compiled is None and own:
            compiled = self._compile(query)
        if compiled is None:
            async with self._engine.connect() as through_engine:
                return [tuple(row) for row in await through_engine.execute(query, parameters)]
        sql, names, defaults = compiled
        values = tuple(parameters[name] if name in parameters else defaults[name] for name in names)
        if self._postgres:
            return await self._fetch(sql, values)
        inline = self._open()
        raw = inline.sqlite_connection
        assert raw is not None
        rows: list[tuple[Any, ...]] = await inline.retrying(lambda: raw.execute(sql, values).fetchall())
        return rows

    async def kept(
        self, key: Hashable, compute: Callable[[bool], Awaitable[tuple[T, Any]]], size: Callable[[T], int] | None = None
    ) -> T:
        """What ``await compute(versioned)`` gives for ``key``, kept while the database's version
        stays (see the module docstring). ``compute`` reads through the engine, after the version
        is read, so what it gives is never older than the version; with ``versioned`` (on
        PostgreSQL) its statement also reads :data:`petstore.db.pet_version.SEEN` and gives it
        back beside the answer, which is kept only if that is the version read first.

        ``size``: how much of :data:`KEPT_SIZE` an answer takes (1 without it); the least recently
        used answers make room, and one larger than the whole is not kept."""
        version = await self._version()
        if version is None:
            return (await compute(False))[0]
        if version != self._kept_at:
            self._kept.clear()
            self._kept_size = 0
            self._kept_at = version
        elif key in self._kept:
            self._kept.move_to_end(key)
            value: T = self._kept[key][0]
            return value
        value, seen = await compute(self._postgres)
        if self._postgres and (0, seen) != version:
            return value  # a change committed between the two reads: keep nothing for it
        weight = 1 if size is None else size(value)
        if self._kept_at == version and weight <= KEPT_SIZE:  # else a commit landed meanwhile: keep nothing
            if key in self._kept:  # computed twice at once
                self._kept_size -= self._kept.pop(key)[1]
            self._kept[key] = (value, weight)
            self._kept_size += weight
            while len(self._kept) > KEPT or self._kept_size > KEPT_SIZE:
                self._kept_size -= self._kept.popitem(last=False)[1][1]
        return value

    async def _version(self) -> tuple[int, int] | None:
        """SQLite: this reader's connection and its ``PRAGMA data_version``, changed by every
        commit of another connection; PostgreSQL: ``pet_version``'s count; None where there is
        neither (an in-memory database, a PostgreSQL database before revision 0006)."""
        if self._postgres:
            if self._versioned is False:
                return None
            try:
                ((count,),) = await self._fetch(pet_version.READ, ())
            except sa_exc.DBAPIError as exc:
                if database_unavailable(exc):
                    raise
                self._versioned = False  # no such table: the schema is before revision 0006
                logger.warning("no pet_version table (migrate to revision 0006): the search counts every page")
                return None
            self._versioned = True
            return 0, int(count)
        if not self._inline:
            return None
        inline = self._open()
        raw = inline.sqlite_connection
        assert raw is not None
        version: int = await inline.retrying(lambda: raw.execute("PRAGMA data_version").fetchone()[0])
        return self._opened, version

    async def _fetch(self, sql: str, values: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run ``sql`` on the reader's PostgreSQL pool, once more on a fresh connection if the one
        it took had been lost (a restart of the server: the engine pings for that)."""
        import asyncpg

        for attempt in (1, 2):
            try:
                pool = await self._postgres_pool()
                async with pool.acquire() as connection:
                    return [tuple(row) for row in await connection.fetch(sql, *values)]
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
                if attempt == 2 or isinstance(exc, ConnectionRefusedError):
                    raise sa_exc.OperationalError(sql, values, exc) from exc
                # asyncpg closes the connection that failed and the pool opens a new one.
            except asyncpg.PostgresError as exc:
                raise sa_exc.DBAPIError(sql, values, exc) from exc
        raise AssertionError("unreachable")

    async def _postgres_pool(self) -> Any:
        if self._pool is None:
            import asyncpg

            # The engine's own reading of its URL: host, port, database, user, password, ssl and
            # the rest of what the URL's query says, as the engine's connections get them.
            _, options = self._engine.dialect.create_connect_args(self._engine.url)
            future = asyncio.get_running_loop().create_future()
            self._pool = future
            try:
                future.set_result(await asyncpg.create_pool(**options, min_size=1, max_size=PG_POOL_SIZE))
            except BaseException as exc:
                self._pool = None
                future.set_exception(exc)
                future.exception()  # retrieved: those waiting on it get it
                raise
        return await asyncio.shield(self._pool)

    def _compile(self, query: Select[Any]) -> tuple[str, tuple[str, ...], Mapping[str, Any]] | None:
        compiled = query.compile(dialect=self._engine.dialect)
        if any(bind.expanding for bind in compiled.binds.values()):
            return None
        entry = (str(compiled), tuple(compiled.positiontup or ()), compiled.params)
        self._compiled[query] = entry  # the queries are module-level, built once: a handful
        return entry

    def _open(self) -> sqlite.Connection:
        if self._connection is None or self._connection.sqlite_connection is None:
            connection = sqlite.connect_url(self._engine.sync_engine.dialect, self._engine.url)  # as the engine's
            raw = connection.sqlite_connection
            assert raw is not None
            raw.execute("PRAGMA query_only=ON")  # a read path that tried to write would fail, loudly
            self._connection = connection
            self._opened += 1
        return self._connection

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.stop()
            self._connection = None
        if self._pool is not None and self._pool.done() and not self._pool.exception():
            pool, self._pool = self._pool.result(), None
            await pool.close()
