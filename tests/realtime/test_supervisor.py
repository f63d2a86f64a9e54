"""Background tasks of the real-time layer never end quietly (petstore.realtime.supervisor)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from petstore.realtime import supervisor
from petstore.realtime.supervisor import supervise
from tests.realtime.support import until


class Observed:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []

    def __call__(self, name: str, value: float = 1.0, **labels: str) -> None:
        self.seen.append((name, labels))


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "MAX_BACKOFF", 0.01)


async def test_a_task_that_raises_is_logged_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    forever = asyncio.Event()

    async def run() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise ValueError("boom")
        await forever.wait()

    observe = Observed()
    with caplog.at_level(logging.ERROR, "petstore.realtime.supervisor"):
        task = supervise("outbox-relay", run, observe)
        await until(lambda: len(runs) == 3, "the third run")
    task.cancel()
    await asyncio.wait({task})
    assert observe.seen == [("realtime.task_restarted", {"task": "outbox-relay"})] * 2
    assert [r.message for r in caplog.records] == ["background task outbox-relay failed; restarting it"] * 2
    assert all(r.exc_info is not None for r in caplog.records)  # the operator gets the traceback


async def test_a_task_that_returns_early_is_restarted_but_one_asked_to_stop_is_not() -> None:
    runs: list[int] = []
    stopping = False

    async def run() -> None:
        runs.append(1)

    observe = Observed()
    task = supervise("redis-broker-listener", run, observe, stopping=lambda: stopping)
    await until(lambda: len(runs) >= 2, "a restart after returning")
    stopping = True
    await until(task.done, "the supervisor to stop once asked")
    assert task.exception() is None
    assert ("realtime.task_restarted", {"task": "redis-broker-listener"}) in observe.seen


async def test_cancelling_stops_the_task_for_good() -> None:
    started = asyncio.Event()

    async def run() -> None:
        started.set()
        await asyncio.Event().wait()

    task = supervise("outbox-relay", run, Observed())
    await started.wait()
    task.cancel()
    await asyncio.wait({task})
    assert task.cancelled()
