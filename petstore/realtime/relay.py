"""The outbox relay: publishes committed outbox rows to the broker, in outbox order, after commit.

Endpoints write their events into the ``outbox`` table in the transaction of the change and set
``state.outbox_wakeup`` after commit. The relay wakes up (or polls, in case a wake-up was
missed or another instance wrote the rows), publishes every unpublished row in id order, and
marks it published. When the broker is down nothing is lost: the rows stay unpublished and
go out, in order, once it answers again.

Several instances: on PostgreSQL one relay publishes at a time, across instances, under a
transaction-scoped advisory lock, and takes its rows with ``SELECT … FOR UPDATE SKIP LOCKED``;
so a row is published once and rooms receive events in outbox order. SQLite means one process.
A crash between publish and mark could publish a row twice; the Redis publish script
remembers the last outbox id per room and ignores a repeat (``source``).

``inventory.changed`` counts are recomputed here, at publish time, in the relay's own
(serialized) transaction: counts computed inside concurrent writers' transactions can each miss
the other's change, and publishing them in order would leave subscribers with wrong numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from petstore.models import OutboxEvent
from petstore.realtime import events
from petstore.realtime.broker import Broker, BrokerUnavailable, Publication, dumps, format_ts
from petstore.realtime.parts import Parts
from petstore.realtime.supervisor import supervise

logger = logging.getLogger("petstore.realtime.relay")

BATCH = 100
POLL_SECONDS = 1.0
MAX_BACKOFF = 1.0
LOCKED_OUT_RETRIES = 25  # x 20 ms: another instance's pass is usually over by then
KEEP_PUBLISHED = timedelta(hours=1)
PRUNE_EVERY_SECONDS = 60.0
#: pg_advisory_xact_lock key: "petstore outbox relay" (any constant shared by the instances).
ADVISORY_KEY = 0x7065_7473_746F_7265

# Core statements, built once: the relay runs for every change, and plain rows are all it needs.
_OUTBOX: Table = OutboxEvent.__table__  # type: ignore[attr-defined]
_UNPUBLISHED = (
    select(
        _OUTBOX.c.id, _OUTBOX.c.event, _OUTBOX.c.rooms, _OUTBOX.c.data, _OUTBOX.c.created_at, _OUTBOX.c.trace_context
    )
    .where(_OUTBOX.c.published_at.is_(None))
    .order_by(_OUTBOX.c.id)
    .limit(BATCH)
)
_UNPUBLISHED_LOCKED = _UNPUBLISHED.with_for_update(skip_locked=True)


class Relay:
    """Publishes the outbox; ``run()`` is the background task, ``drain()`` one full pass."""

    def __init__(self, state: Parts, broker: Broker) -> None:
        self._state = state
        self._broker = broker
        self._sessions = state.sessions
        self._postgres = state.engine.dialect.name == "postgresql"
        self._last_prune = 0.0
        self._locked_out = False  # the last drain gave way to another instance's relay
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> None:
        self._task = supervise("outbox-relay", self.run, self._state.plugins.observe, stopping=self._stopping.is_set)

    async def stop(self, wait_seconds: float = 5.0) -> None:
        """Let the relay finish the pass it is in, then stop; cancel it only if that takes too long.

        Cancelling in the middle of a database call can leave the driver's work running after
        the event loop is gone (aiosqlite's thread), so a graceful stop comes first.
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        self._state.outbox_wakeup.set()
        # asyncio.wait, not ``await task``: the caller's own cancellation must not be swallowed
        # as if it were the relay's, and a stuck relay must not hold the whole shutdown.
        done, _ = await asyncio.wait({task}, timeout=wait_seconds)
        if not done:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if not done:
                logger.warning("outbox relay did not stop within %.1fs; leaving it behind", wait_seconds)

    async def _pause(self, seconds: float, wakeup: asyncio.Event | None = None) -> None:
        """Wait ``seconds``, or less when woken (a commit) or asked to stop."""
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if wakeup is not None:
            waiters.append(asyncio.ensure_future(wakeup.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def run(self) -> None:
        wakeup = self._state.outbox_wakeup
        failures = 0
        with contextlib.suppress(SQLAlchemyError, OSError):
            await self._report_inventory()  # the gauge has a value before the first change
        while not self._stopping.is_set():
            try:
                await self.drain()
                failures = 0
                if self._locked_out:
                    await self._report_pending()
                else:  # drain() stopped at a partial batch: the outbox was empty then, no query needed
                    self._state.plugins.observe("outbox.pending", 0.0)
                await self._prune()
            except BrokerUnavailable as exc:
                failures += 1
                if failures == 1:
                    logger.warning("broker unavailable, events wait in the outbox: %s", exc)
            except (SQLAlchemyError, OSError) as exc:
                failures += 1
                logger.warning("outbox relay: database error: %s", type(exc).__name__)
            if failures:
                with contextlib.suppress(SQLAlchemyError, OSError):
                    await self._report_pending()  # the backlog grows while the broker is away
                # Back off, with jitter so instances do not retry in lock-step.
                delay = min(MAX_BACKOFF, 0.05 * 2**failures) * random.uniform(0.5, 1.0)  # noqa: S311
                await self._pause(delay)
                continue
            await self._pause(POLL_SECONDS, wakeup)
            wakeup.clear()

    async def drain(self) -> int:
        """Publish every unpublished row; returns how many. Raises BrokerUnavailable on the way."""
        total = 0
        locked_out = 0
        self._locked_out = False
        while True:
            published = await self._batch()
            if published is None:
                # Another instance holds the relay lock and publishes. It may have finished its
                # last pass just before our rows committed, so look again a few times shortly;
                # after that the poll (or the next wake-up) takes over.
                locked_out += 1
                if locked_out > LOCKED_OUT_RETRIES:
                    self._locked_out = True
                    return total
                await asyncio.sleep(0.02)
                continue
            locked_out = 0
            total += published
            if published < BATCH:
                return total

    async def _batch(self) -> int | None:
        async with self._sessions() as session:
            if self._postgres:
                locked = await session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ADVISORY_KEY})
                if not locked.scalar_one():
                    await session.rollback()
                    return None
            query = _UNPUBLISHED_LOCKED if self._postgres else _UNPUBLISHED
            rows = list(await session.execute(query))
            if not rows:
                await session.commit()
                return 0
            if not self._postgres:
                # SQLite: end the read transaction now, so marking rows later cannot hit a stale
                # snapshot (one process owns the relay, so nobody else takes these rows).
                await session.commit()
            await self._publish_rows(session, rows)  # all or none: on BrokerUnavailable nothing is marked
            ids = [row.id for row in rows]
            await session.execute(_OUTBOX.update().where(_OUTBOX.c.id.in_(ids)).values(published_at=datetime.now(UTC)))
            await session.commit()
            return len(rows)

    async def _publish_rows(self, session: AsyncSession, rows: Sequence[Any]) -> None:
        """Publish ``rows`` (outbox rows: id, event, rooms, data, created_at, trace_context) in one go,
        inside the tracing plugins' span when they are loaded."""
        tracing = self._state.plugins.tracing
        if tracing is None:
            await self._publish(session, rows)
            return
        with tracing.publishing([(row.event, row.trace_context) for row in rows]):
            await self._publish(session, rows)

    async def _publish(self, session: AsyncSession, rows: Sequence[Any]) -> None:
        counts: str | None = None
        publications = []
        for row in rows:
            data_json = dumps(row.data)
            if row.event == "inventory.changed":
                if counts is None:
                    fresh = await events.inventory_counts(session)
                    for status, count in fresh.items():
                        self._state.plugins.observe("inventory.pets", float(count), status=status)
                    counts = dumps(fresh)
                data_json = counts
            trace = None if row.trace_context is None else dumps(row.trace_context)
            publications.append(
                Publication(list(row.rooms), row.event, data_json, format_ts(row.created_at), row.id, trace)
            )
        await self._broker.publish_all(publications)
        for row in rows:
            self._state.plugins.observe("event.published", event=row.event)

    async def _report_inventory(self) -> None:
        async with self._sessions() as session:
            counts = await events.inventory_counts(session)
        for status, count in counts.items():
            self._state.plugins.observe("inventory.pets", float(count), status=status)

    async def pending(self) -> int:
        async with self._sessions() as session:
            query = select(func.count()).select_from(_OUTBOX).where(_OUTBOX.c.published_at.is_(None))
            return int((await session.execute(query)).scalar_one())

    async def _report_pending(self) -> None:
        self._state.plugins.observe("outbox.pending", float(await self.pending()))

    async def _prune(self) -> None:
        """Published rows are kept an hour (for inspection), then deleted so the table stays small."""
        now = asyncio.get_running_loop().time()
        if now - self._last_prune < PRUNE_EVERY_SECONDS:
            return
        self._last_prune = now
        async with self._sessions() as session:
            await session.execute(_OUTBOX.delete().where(_OUTBOX.c.published_at < datetime.now(UTC) - KEEP_PUBLISHED))
            await session.commit()
