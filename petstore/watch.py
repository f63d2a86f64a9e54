"""``petstore watch ROOM [ROOM...] [--url URL] [--token-file FILE]``: rooms' events, live, in the terminal.

A client of ``/ws`` like any other: it subscribes to every room named on one connection, prints
each snapshot and every event, and when the connection drops (server restart 1012, network) it
reconnects with backoff and jitter and resubscribes with ``since``, so the output goes on
without a gap or a repeat. If the server can no longer prove continuity it says so and prints
the new snapshot. With several rooms each line names its room.

The token comes from ``PETSTORE_TOKEN`` or the first line of ``--token-file``, so that it never
shows in ``ps`` (``--token`` still works, with a warning saying so). It goes in the
``Authorization`` header, never in the URL. Exit status: 0 on Ctrl-C or after ``--count``
events, 1 when the server refuses a room or the token, 2 for an unreadable token file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from petstore.errors import PetstoreError

#: A Retry-After longer than this (seconds) is not waited out in full: the watch is interactive.
MAX_RETRY_AFTER = 300.0
MAX_BACKOFF = 10.0
REFUSED = 1008
TOKEN_ENV = "PETSTORE_TOKEN"  # noqa: S105 (the name of the variable, not a token)


def retry_delay(exc: BaseException, attempt: int) -> float:
    """How long to wait before the next attempt: backoff with jitter, and at least the server's
    ``Retry-After`` when it refused the upgrade for now (429 over the connection limit, 503)."""
    delay: float = min(MAX_BACKOFF, 0.25 * 2**attempt) * random.uniform(0.5, 1.0)  # noqa: S311
    if isinstance(exc, InvalidStatus) and exc.response.status_code in (429, 503):
        retry_after = str(exc.response.headers.get("Retry-After", ""))
        if retry_after.isdigit():
            delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
    return delay


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


def describe(message: dict[str, Any], *, with_room: bool = False) -> str:
    data = json.dumps(message.get("data"), separators=(",", ":"), ensure_ascii=False)
    room = f"{message.get('room')}  " if with_room else ""
    return f"{message.get('ts', '')}  {room}#{message.get('offset')}  {message.get('event')}  {data}"


@dataclass
class Position:
    """Where a room's output is: the last event shown (None before the first subscription)."""

    epoch: str | None = None
    offset: int = 0


class Watcher:
    """Follows rooms across reconnects; ``out`` and ``err`` receive the lines to show."""

    def __init__(
        self,
        url: str,
        rooms: str | Sequence[str],
        token: str | None = None,
        *,
        out: Callable[[str], None] = print,
        err: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
    ) -> None:
        self.url = ws_endpoint(url)
        names = [rooms] if isinstance(rooms, str) else list(dict.fromkeys(rooms))
        self.rooms = {room: Position() for room in names}
        self.token = token
        self.print = out
        self.warn = err
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
                delay = retry_delay(exc, attempt)
                if isinstance(exc, InvalidStatus):
                    self.warn(f"the server answered {exc.response.status_code}; reconnecting in {delay:.1f}s")
                else:
                    self.warn(f"connection lost ({type(exc).__name__}); reconnecting in {delay:.1f}s")
                await asyncio.sleep(delay)

    async def _session(self, count: int | None) -> bool:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with connect(self.url, additional_headers=headers, open_timeout=10) as ws:
            self.connections += 1
            for room, position in self.rooms.items():
                subscribe: dict[str, Any] = {"type": "subscribe", "room": room, "id": self.connections}
                if position.epoch is not None:
                    subscribe["since"] = {"offset": position.offset, "epoch": position.epoch}
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
        several = len(self.rooms) > 1
        if kind == "error":
            raise Refused(f"{message.get('code')}: {message.get('message')}")
        position = self.rooms.get(str(message.get("room")))
        if position is None:
            return False
        named = f"{message['room']}: " if several else ""
        if kind == "subscribed":
            fresh = position.epoch is None
            if not fresh and not message.get("recovered"):
                self.warn(f"{named}history could not be recovered: starting over from a snapshot")
            if fresh or not message.get("recovered"):
                position.epoch, position.offset = message["epoch"], message["offset"]
                snapshot = message.get("snapshot")
                if snapshot is not None:
                    room = f"  {message['room']}" if several else ""
                    self.print(f"snapshot{room}  {json.dumps(snapshot, separators=(',', ':'), ensure_ascii=False)}")
            elif self.connections > 1:
                self.warn(f"{named}reconnected: recovered from #{position.offset}")
            return False
        if kind != "event":
            return False
        if message["epoch"] == position.epoch and message["offset"] <= position.offset:
            return False  # already shown
        position.epoch, position.offset = message["epoch"], message["offset"]
        self.events += 1
        self.print(describe(message, with_room=several))
        return True


class TokenFileError(PetstoreError):
    """``--token-file`` cannot be read, or holds no token."""


def read_token(args: argparse.Namespace, warn: Callable[[str], None]) -> str | None:
    """The token: ``--token-file``, else ``--token`` (with a warning), else ``PETSTORE_TOKEN``, else None."""
    if args.token_file is not None:
        try:
            lines = Path(args.token_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"cannot read the token file {args.token_file}: {exc}") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise TokenFileError(f"the token file {args.token_file} is empty")
        return token
    if args.token:
        warn(
            f"petstore watch: warning: --token shows in `ps` to every local user; "
            f"use {TOKEN_ENV} or --token-file instead"
        )
        return str(args.token)
    return os.environ.get(TOKEN_ENV) or None


def command(args: argparse.Namespace) -> int:
    """Print rooms' events live (inventory, pets, pet:ID, orders, user:NAME); Ctrl-C to stop.

    The token (for orders and user:NAME) comes from PETSTORE_TOKEN or --token-file, never from
    the URL, so that it does not show in ps.
    """

    def warn(line: str) -> None:
        print(line, file=sys.stderr)

    try:
        token = read_token(args, warn)
    except TokenFileError as exc:
        warn(f"petstore watch: error: {exc}")
        return 2
    watcher = Watcher(args.url, args.rooms, token, err=warn)
    try:
        return asyncio.run(watcher.run(args.count))
    except KeyboardInterrupt:
        return 0


def add_parser(commands: Any, describe: Callable[[str | None], str] = lambda doc: doc or "") -> None:
    """The ``watch`` subcommand, for ``petstore.cli`` (``describe`` makes a docstring its help text)."""
    p = commands.add_parser("watch", help="print rooms' live events", description=describe(command.__doc__))
    p.add_argument("rooms", nargs="+", metavar="ROOM", help="inventory, pets, pet:ID, orders or user:NAME")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default: %(default)s)")
    p.add_argument(
        "--token-file",
        metavar="FILE",
        default=None,
        help=f"read the access token from this file's first line (else {TOKEN_ENV} is used)",
    )
    p.add_argument("--token", default=None, help=f"an access token (visible in ps: prefer {TOKEN_ENV} or --token-file)")
    p.add_argument("--count", type=int, default=None, help="stop after this many events")
    p.set_defaults(func=command)
