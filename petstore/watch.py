"""``petstore watch ROOM [--url URL] [--token T]``: a room's events, live, in the terminal.

A client of ``/ws`` like any other: it subscribes, prints the snapshot and every event, and
when the connection drops (server restart 1012, network) it reconnects with backoff and jitter
and resubscribes with ``since``, so the output goes on without a gap or a repeat. If the server
can no longer prove continuity it says so and prints the new snapshot. The token goes in the
``Authorization`` header, never in the URL. Exit status: 0 on Ctrl-C or after ``--count``
events, 1 when the server refuses the room or the token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from petstore.errors import PetstoreError

MAX_BACKOFF = 10.0
REFUSED = 1008


class Refused(PetstoreError):
    """The server refused the room or the credentials; retrying cannot help."""


def ws_endpoint(url: str) -> str:
    """``http://host:port`` (or ``ws://…``, with or without ``/ws``) → the ``/ws`` endpoint."""
    url = url.rstrip("/")
    if url.startswith("http://"):
        url = "ws://" + url[len("http://") :]
    elif url.startswith("https://"):
        url = "wss://" + url[len("https://") :]
    return url if url.endswith("/ws") else url + "/ws"


def describe(message: dict[str, Any]) -> str:
    data = json.dumps(message.get("data"), separators=(",", ":"), ensure_ascii=False)
    return f"{message.get('ts', '')}  #{message.get('offset')}  {message.get('event')}  {data}"


class Watcher:
    """Follows one room across reconnects; ``out`` and ``err`` receive the lines to show."""

    def __init__(
        self,
        url: str,
        room: str,
        token: str | None = None,
        *,
        out: Callable[[str], None] = print,
        err: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    ) -> None:
        self.url = ws_endpoint(url)
        self.room = room
        self.token = token
        self.print = out
        self.warn = err
        self.epoch: str | None = None
        self.offset = 0
        self.events = 0
        self.connections = 0

    async def run(self, count: int | None = None) -> int:
        """Watch until ``count`` events were printed (forever when None); the exit status."""
        attempt = 0
        while True:
            try:
                if await self._session(count):
                    return 0
                attempt = 0
            except Refused as exc:
                self.warn(f"refused: {exc}")
                return 1
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
                    self.warn(f"refused: the server answered {exc.response.status_code}")
                    return 1
                attempt += 1
                delay = min(MAX_BACKOFF, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
                self.warn(f"connection lost ({type(exc).__name__}); reconnecting in {delay:.1f}s")
                await asyncio.sleep(delay)

    async def _session(self, count: int | None) -> bool:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with connect(self.url, additional_headers=headers, open_timeout=10) as ws:
            self.connections += 1
            subscribe: dict[str, Any] = {"type": "subscribe", "room": self.room, "id": self.connections}
            if self.epoch is not None:
                subscribe["since"] = {"offset": self.offset, "epoch": self.epoch}
            await ws.send(json.dumps(subscribe))
            while True:
                for message in await self._receive(ws):
                    if self._handle(message) and count is not None and self.events >= count:
                        return True

    async def _receive(self, ws: ClientConnection) -> list[dict[str, Any]]:
        try:
            raw = await ws.recv()
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == REFUSED:
                raise Refused(exc.rcvd.reason or "policy violation (bad or expired token?)") from None
            raise
        body = json.loads(raw)
        return body if isinstance(body, list) else [body]

    def _handle(self, message: dict[str, Any]) -> bool:
        """Show one server message; True when it was a new event."""
        kind = message.get("type")
        if kind == "subscribed":
            fresh = self.epoch is None
            if not fresh and not message.get("recovered"):
                self.warn("history could not be recovered: starting over from a snapshot")
            if fresh or not message.get("recovered"):
                self.epoch, self.offset = message["epoch"], message["offset"]
                snapshot = message.get("snapshot")
                if snapshot is not None:
                    self.print(f"snapshot  {json.dumps(snapshot, separators=(',', ':'), ensure_ascii=False)}")
            elif self.connections > 1:
                self.warn(f"reconnected: recovered from #{self.offset}")
            return False
        if kind == "error":
            raise Refused(f"{message.get('code')}: {message.get('message')}")
        if kind != "event" or message.get("room") != self.room:
            return False
        if message["epoch"] == self.epoch and message["offset"] <= self.offset:
            return False  # already shown
        self.epoch, self.offset = message["epoch"], message["offset"]
        self.events += 1
        self.print(describe(message))
        return True


def command(args: argparse.Namespace) -> int:
    """Print a room's events live (inventory, pets, pet:ID, orders, user:NAME); Ctrl-C to stop."""
    watcher = Watcher(args.url, args.room, args.token)
    try:
        return asyncio.run(watcher.run(args.count))
    except KeyboardInterrupt:
        return 0


def add_parser(commands: Any) -> None:
    """The ``watch`` subcommand, for ``petstore.cli``."""
    p = commands.add_parser("watch", help="print a room's live events", description=command.__doc__)
    p.add_argument("room", metavar="ROOM", help="inventory, pets, pet:ID, orders or user:NAME")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    p.add_argument("--token", default=None, help="an access token, sent in the Authorization header")
    p.add_argument("--count", type=int, default=None, help="stop after this many events")
    p.set_defaults(func=command)
