"""Background tasks that must not die quietly: the broker's listener and the outbox relay.

A task of the real-time layer that ends by itself stops delivery for every client of this
instance while REST goes on, so nobody notices: the dashboards simply stand still. Each such
task therefore runs under :func:`supervise`, which restarts it (with backoff and jitter) when
it raises anything or returns, logs the failure once with its traceback, and reports it through
``observe("realtime.task_restarted", task=name)`` so an operator's alert can see it.

The tasks themselves recover from the faults they expect (a Redis restart, a database error)
without ending; the supervisor is the net under what nobody expected.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any

logger = logging.getLogger("petstore.realtime.supervisor")

MAX_BACKOFF = 5.0
#: A run that lasted this long had recovered; its backoff starts over.
HEALTHY_SECONDS = 60.0


def supervise(
    name: str,
    run: Callable[[], Coroutine[Any, Any, None]],
    observe: Callable[..., None],
    *,
    stopping: Callable[[], bool] = lambda: False,
) -> asyncio.Task[None]:
    """Run ``run()`` as a task named ``name``, restarting it whenever it ends before
    ``stopping()`` says it should; cancelling the returned task stops it for good."""

    async def keep_running() -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                logger.exception("background task %s failed; restarting it", name)
            else:
                if stopping():
                    return
                failures += 1
                logger.error("background task %s ended by itself; restarting it", name)
            observe("realtime.task_restarted", task=name)
            if loop.time() - started > HEALTHY_SECONDS:
                failures = 1  # it had been working: this is a new fault, not the same one again
            delay = min(MAX_BACKOFF, 0.1 * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0)  # noqa: S311
            await asyncio.sleep(delay)

    return asyncio.create_task(keep_running(), name=name)
