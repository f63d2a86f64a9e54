"""The real-time layer: what the rest of the app knows of it, and all it knows.

The pipeline, each stage a module of this package::

    events     a change's events, written in its own transaction (the outbox)
    relay      publishes committed events, once, in order           (supervisor restarts it)
    broker/    in-process or Redis: offsets, history, recovery       (supervisor restarts its listener)
    hub        this instance's subscribers: rooms, bounded queues, fan-out
    ws, sse    the two transports; rooms says who may join what

The endpoints record events (:mod:`events`), the app mounts :func:`routes` and its lifespan
runs one :class:`Realtime` built from its :class:`Parts`, and ``petstore serve``'s protocols (``petstore.server``) offer
the two ASGI extensions named here. Nothing outside this package imports its other modules.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from petstore.realtime import events, rooms, sse, ws
from petstore.realtime.hub import POLICY_VIOLATION, RESTARTING, Connection, Hub
from petstore.realtime.layer import Realtime, Subscribed, realtime
from petstore.realtime.parts import Parts
from petstore.realtime.sse import STREAM_EXTENSION
from petstore.realtime.ws import WRITE_EXTENSION

__all__ = [
    "POLICY_VIOLATION",
    "RESTARTING",
    "STREAM_EXTENSION",
    "WRITE_EXTENSION",
    "Connection",
    "Hub",
    "Parts",
    "Realtime",
    "Subscribed",
    "events",
    "realtime",
    "rooms",
    "routes",
]


def routes() -> list[BaseRoute]:
    """``/ws`` and ``/api/v3/events``."""
    return [*ws.routes(), *sse.routes()]
