"""Graceful shutdown under uvicorn: it begins when the server stops listening, not after the last client left.

uvicorn's order on SIGTERM is: close the listening sockets, call every connection protocol's
``shutdown()``, wait for connections and tasks (at most ``timeout_graceful_shutdown``, forever if
unset), and only then run the app's lifespan shutdown. WebSocket and SSE clients never leave by
themselves, so a hub that said 1012 in the lifespan shutdown said it never, and the process hung.

The protocols ``petstore serve`` runs (:mod:`petstore.server.uvicorn_ws`, :mod:`petstore.server.uvicorn_http`)
call :func:`begin` from their ``shutdown()``. The first call, right after the listeners closed,
starts this process's one :class:`Drain`:

1. the instance is not ready any more: ``/readyz`` answers 503 with ``"shutdown": "draining"``
   on connections still open (a load balancer's keep-alive connections stay open for the drain);
2. the hub closes every WebSocket with 1012 (the only close frame the client gets: the protocol
   sends none of its own) and ends every SSE stream, all at once;
3. a real-time connection still open ``close_grace`` seconds later (a client that stopped reading,
   so not even the close frame can be written) is aborted, and one log line says how many;
4. idle keep-alive connections are closed; uvicorn waits for requests in flight (at most
   ``timeout_graceful_shutdown``, set from ``PETSTORE_SHUTDOWN_TIMEOUT`` when not given), just
   before which a response stuck on a client that does not read is aborted too; then the lifespan
   shutdown runs its steps in what is left of the bound (``AppState.shutdown_seconds_left``).

So the process exits within ``PETSTORE_SHUTDOWN_TIMEOUT`` (10 s by default) whatever its clients
do. Under any other ASGI server the lifespan shutdown does the same drain, as far as ASGI allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from uvicorn.config import Config

from petstore.realtime import RESTARTING, Hub
from petstore.state import AppState

logger = logging.getLogger("petstore.server.shutdown")

#: Each app's drain, once begun (an app is drained once, however many protocols call begin).
_DRAINS: weakref.WeakKeyDictionary[AppState, Drain] = weakref.WeakKeyDictionary()
#: How long a real-time client may take to finish closing after its 1012, at most (and at most a
#: fifth of the bound): a healthy client answers the close frame in milliseconds.
CLOSE_GRACE_SECONDS = 2.0
#: The share of the bound uvicorn may spend waiting for connections; the lifespan gets the rest.
CONNECTIONS_SHARE = 0.5
#: How long before uvicorn stops waiting a response stuck on a client that does not read is aborted
#: (uvicorn would cancel its task, and log the cancellation as a traceback).
LAST_CALL_SECONDS = 0.3


class Watched(Protocol):
    """A connection protocol the drain may have to abort."""

    def abort_if_open(self) -> bool:
        """Abort the transport unless the connection is already gone; True if it was aborted."""


def connections_timeout(bound: float) -> int:
    """uvicorn's ``timeout_graceful_shutdown`` for a shutdown bound of ``bound`` seconds."""
    return max(1, int(bound * CONNECTIONS_SHARE))


class Drain:
    """One process's shutdown, from the first protocol ``shutdown()`` on (see the module docstring)."""

    def __init__(self, state: AppState, config: Config) -> None:
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        state.begin_shutdown()
        bound = state.settings.shutdown_timeout
        self.close_grace = min(CLOSE_GRACE_SECONDS, bound / 5)
        if config.timeout_graceful_shutdown is None:
            # Read by uvicorn right after the protocols' shutdown(): bounds its wait, plain uvicorn too.
            config.timeout_graceful_shutdown = connections_timeout(bound)
        self.connections_timeout = float(config.timeout_graceful_shutdown)
        self.watched: set[Watched] = set()
        self.when_drained: list[Callable[[], None]] = []
        self.last_calls: list[Callable[[], bool]] = []
        self.drained = False
        self._watched_gone = asyncio.Event()
        self._watched_gone.set()
        self.hub: Hub | None = state.realtime.hub if state.realtime is not None else None
        if self.hub is not None:
            self.hub.close_every(RESTARTING, also_new=True)
        self.task = self.loop.create_task(self.run(), name="petstore-drain")
        last_call = self.started + max(self.close_grace, self.connections_timeout - LAST_CALL_SECONDS)
        self.loop.call_at(last_call, self.last_call)

    def watch(self, protocol: Watched) -> None:
        """A real-time connection (WebSocket, SSE stream): aborted if still open after the grace."""
        if self.drained:
            protocol.abort_if_open()
            return
        self.watched.add(protocol)
        self._watched_gone.clear()

    def lost(self, protocol: Watched) -> None:
        """Called by a protocol whose connection is gone."""
        self.watched.discard(protocol)
        if not self.watched:
            self._watched_gone.set()

    def after_drain(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once the real-time clients are gone (now, if they already are)."""
        if self.drained:
            callback()
        else:
            self.when_drained.append(callback)

    def before_giving_up(self, callback: Callable[[], bool]) -> None:
        """Run ``callback`` just before uvicorn stops waiting; it returns True if it aborted something."""
        self.last_calls.append(callback)

    async def _gone(self) -> None:
        # Every protocol's shutdown() ran before this task's first turn (uvicorn calls them in one
        # loop without awaiting), so ``watched`` is complete; both must empty, in either order.
        await self._watched_gone.wait()
        if self.hub is not None:
            await self.hub.wait_empty(None)

    async def run(self) -> None:
        hub = self.hub
        try:
            left = self.started + self.close_grace - self.loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gone(), max(0.0, left))
            aborted = sum(protocol.abort_if_open() for protocol in tuple(self.watched))
            if aborted:
                logger.warning(
                    "shutdown: %d WebSocket/SSE connections were still open %.1fs after being closed "
                    "(clients not reading); aborted them",
                    aborted,
                    self.close_grace,
                )
            # Aborted transports end their sessions within a turn or two of the loop.
            if hub is not None and not await hub.wait_empty(1.0):
                logger.warning("shutdown: %d real-time sessions did not end; going on", len(hub.connections))
        finally:
            self.drained = True
            callbacks, self.when_drained = self.when_drained, []
            for callback in callbacks:
                callback()

    def last_call(self) -> None:
        stuck = sum(callback() for callback in self.last_calls)
        if stuck:
            logger.warning(
                "shutdown: %d responses were stuck on clients not reading %.1fs after shutdown began; aborted them",
                stuck,
                self.loop.time() - self.started,
            )


class Participant(Watched, Protocol):
    """A uvicorn protocol that takes part in the drain (it keeps the drain it joined)."""

    drain: Drain | None

    @property
    def app_state(self) -> Mapping[str, Any]: ...

    @property
    def config(self) -> Config: ...


def join(protocol: Participant, uvicorn_shutdown: Callable[[], None]) -> Drain | None:
    """For a protocol's ``shutdown()``: the drain it now takes part in, or None once uvicorn's own
    ``shutdown()`` has run because the app is not petstore."""
    drain = begin(protocol.app_state, protocol.config)
    if drain is None:
        uvicorn_shutdown()
    protocol.drain = drain
    return drain


def begin(app_state: Mapping[str, Any], config: Config) -> Drain | None:
    """The process's drain, started by the first call: None when the app is not petstore."""
    state = app_state.get("petstore")
    if not isinstance(state, AppState):
        return None
    drain = _DRAINS.get(state)
    if drain is None:
        drain = _DRAINS[state] = Drain(state, config)
    return drain
