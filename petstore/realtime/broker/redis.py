"""The Redis broker: history in one stream per room, fan-out between instances by pub/sub.

Keys of a room ``R``:

- ``petstore:{R}:meta``  hash ``epoch``, ``offset``: the room's position.
- ``petstore:{R}:log``   stream of the last ``history_size`` frames, entry id ``0-<offset>``.
- ``petstore:{R}:src``   sorted set outbox id → offset, so a retried publish is a no-op.
- channel ``petstore:room:R``: each frame, as published; an event whose outbox row kept a trace
  context goes as ``@<context JSON>\n<frame>`` instead (a frame starts with ``{`` and holds no
  newline), so other instances' traced delivery joins the request's trace. The stream keeps the
  frame alone: what clients read is the same either way.

All three keys get the history TTL on every publish, so a room expires as a whole; a missing
``meta`` (restart without persistence, expiry) starts a new epoch, which tells clients that
history was lost. Publishing is one Lua script for all the rooms of an event: offsets,
streams, dedup and PUBLISH happen atomically or not at all, so an event that reached one of
its rooms is never published again to another after Redis lost its memory. (The keys of
several rooms in one script: a single Redis server or a replicated one, not Redis Cluster.)

Each instance holds ONE pub/sub connection for the rooms its local clients watch, read by one
listener task. When it breaks (or goes silent: the watchdog pings it and gives up when no
answer comes), the listener reconnects with backoff and jitter, resubscribes, and fills every
watched room's gap from its stream, so a client that stays connected misses nothing. Any
failure on the way, the gap fill's included, ends in a reconnect, never in the end of the
listener; :func:`~petstore.realtime.supervisor.supervise` restarts it should it end all the same.
``connected`` is True from the moment the gaps are filled until the connection is lost. The
listener speaks to its connection directly (redis-py's ``Connection``), because redis-py's
``PubSub`` reconnects and resubscribes on its own, which would hide exactly the gap to fill.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from petstore.config import Settings
from petstore.errors import PetstoreError
from petstore.realtime.broker import (
    BrokerUnavailable,
    Deliver,
    History,
    Message,
    Observe,
    Publication,
    Since,
    frame_tail,
)
from petstore.realtime.broker.memory import continuation
from petstore.realtime.supervisor import supervise
from petstore.redis_client import request_client

logger = logging.getLogger("petstore.realtime.broker.redis")

PUBLISH = """
local tail, maxlen, ttl, source, trace = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local offsets = {}
for i = 0, (#KEYS / 3) - 1 do
  local meta, log, src = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  local room, channel, fresh = ARGV[6 + i * 3], ARGV[7 + i * 3], ARGV[8 + i * 3]
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = fresh
    redis.call('DEL', log, src)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  end
  if redis.call('ZSCORE', src, source) then
    offsets[#offsets + 1] = 0
  else
    local offset = redis.call('HINCRBY', meta, 'offset', 1)
    local frame = '{"type":"event","room":' .. room .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '",' .. tail
    redis.call('XADD', log, 'MAXLEN', maxlen, '0-' .. offset, 'f', frame)
    redis.call('ZADD', src, offset, source)
    redis.call('ZREMRANGEBYRANK', src, 0, -(tonumber(maxlen) + 1))
    redis.call('EXPIRE', meta, ttl)
    redis.call('EXPIRE', log, ttl)
    redis.call('EXPIRE', src, ttl)
    if trace == '' then
      redis.call('PUBLISH', channel, frame)
    else
      redis.call('PUBLISH', channel, '@' .. trace .. '\\n' .. frame)
    end
    offsets[#offsets + 1] = offset
  end
end
return offsets
"""

READ = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local offset = tonumber(redis.call('HGET', KEYS[1], 'offset'))
local after = tonumber(ARGV[3])
local frames = {}
if after >= 0 and after < offset and (ARGV[4] == '' or ARGV[4] == epoch) then
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '(0-' .. after, '+')) do
    frames[#frames + 1] = entry[2][2]
  end
end
return {epoch, offset, frames}
"""

CHANNEL_PREFIX = "petstore:room:"
EMPTY_ROOM_TTL_SECONDS = 3600
SUBSCRIBE_TIMEOUT = 5.0
MAX_BACKOFF = 2.0
#: Tries again of a command whose connection broke (a restart): not an outage yet.
RETRIES = 2


async def _retrying(error: Exception) -> None:
    """Before a command is tried again: nothing to do (its connection was already dropped)."""


def keys(room: str) -> list[str]:
    return [f"petstore:{{{room}}}:meta", f"petstore:{{{room}}}:log", f"petstore:{{{room}}}:src"]


def channel(room: str) -> str:
    return CHANNEL_PREFIX + room


class ListenerSilent(PetstoreError):
    """The pub/sub connection did not answer the watchdog's ping in time."""


#: What a Redis or network fault looks like to the listener: logged in one line, then reconnect.
EXPECTED_FAULTS = (RedisError, OSError, TimeoutError, ListenerSilent, BrokerUnavailable)


class RedisBroker:
    name = "redis"

    def __init__(
        self,
        settings: Settings,
        deliver: Deliver,
        observe: Observe,
        *,
        client: redis.asyncio.Redis | None = None,
        watchdog_seconds: float = 5.0,
    ) -> None:
        assert settings.redis_url
        self._deliver = deliver
        self._observe = observe
        self._size = settings.history_size
        self._ttl = settings.history_ttl_seconds
        # A room read but never published to (a subscriber to a pet nobody changes) has nothing to
        # keep: its position expires sooner, so a crawl through pet ids cannot fill Redis for a day.
        self._empty_ttl = min(self._ttl, EMPTY_ROOM_TTL_SECONDS)
        self._watchdog = watchdog_seconds
        # The process's one client (petstore.redis_client: a bounded pool that makes callers wait
        # for a free connection), shared with auth and the rate limits; a broker made without one
        # (a test, a tool) makes its own and closes it.
        self._owns_client = client is None
        own = client if client is not None else request_client(settings)
        assert own is not None  # a redis_url is set
        self._client: redis.asyncio.Redis = own
        # A command that meets a connection broken by a Redis restart is tried again, with backoff,
        # on a fresh one: every command here is safe to repeat (publishing a source twice is a
        # no-op). The shared pool retries once at once; this rides over a restart a little longer.
        self._retry = Retry(
            ExponentialBackoff(cap=0.5, base=0.05),
            RETRIES,
            supported_errors=(redis.exceptions.ConnectionError, redis.exceptions.TimeoutError),
        )
        self._publish = self._client.register_script(PUBLISH)
        self._read = self._client.register_script(READ)
        self._watched: dict[str, int] = {}
        self._cursors: dict[str, Since] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._conn: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0
        #: True while the listener is subscribed and delivering (readiness, ``petstore_broker_connected``).
        self.connected = False

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._observe("broker.connected", 0.0)
        self._task = supervise("redis-broker-listener", self._run, self._observe)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Whatever the task ends with, shutdown goes on (the supervisor lets nothing else out).
            await asyncio.wait({self._task})
            self._task = None
        if self._owns_client:
            await self._client.aclose(close_connection_pool=True)

    async def ping(self) -> None:
        await self._client.ping()

    # -- publishing and history ---------------------------------------------------------------

    async def publish(self, room_names: list[str], event: str, data_json: str, ts: str, source: int) -> None:
        await self.publish_all([Publication(room_names, event, data_json, ts, source)])

    async def publish_all(self, publications: Sequence[Publication]) -> None:
        """One script call per publication, all in one pipeline (one round trip)."""
        calls = [self._script_call(publication) for publication in publications]

        async def once() -> None:
            if len(calls) == 1:
                await self._publish(*calls[0])
                return
            async with self._client.pipeline(transaction=False) as pipe:
                for call_keys, call_args in calls:
                    await self._publish(call_keys, call_args, client=pipe)
                await pipe.execute()

        try:
            await self._retry.call_with_retry(once, _retrying)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis publish failed: {type(exc).__name__}") from exc

    def _script_call(self, publication: Publication) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of the publish script for one publication."""
        args: list[str | int] = [
            frame_tail(publication.event, publication.data_json, publication.ts),
            self._size,
            self._ttl,
            publication.source,
            publication.trace or "",
        ]
        all_keys: list[str] = []
        for room in publication.rooms:
            all_keys += keys(room)
            args += [json.dumps(room), channel(room), uuid.uuid4().hex]
        return all_keys, args

    async def history(self, room: str, since: Since | None) -> History:
        after = since.offset if since is not None else -1
        epoch, offset, frames = await self._read_room(room, after, since.epoch if since else "")
        if since is None:
            return History(epoch, offset, None)
        messages = [Message.parse(frame) for frame in frames]
        return History(epoch, offset, continuation(epoch, offset, since, messages))

    async def _read_room(self, room: str, after: int, epoch: str) -> tuple[str, int, list[bytes]]:
        try:
            args: list[str | int] = [uuid.uuid4().hex, self._empty_ttl, after, epoch]
            reply: Any = await self._retry.call_with_retry(lambda: self._read(keys=keys(room), args=args), _retrying)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis read failed: {type(exc).__name__}") from exc
        return reply[0].decode(), int(reply[1]), list(reply[2])

    # -- watching rooms -----------------------------------------------------------------------

    async def watch(self, room: str) -> None:
        count = self._watched.get(room, 0)
        self._watched[room] = count + 1
        try:
            confirmed = self._confirmed.get(room)
            if confirmed is None:
                confirmed = self._confirmed[room] = asyncio.get_running_loop().create_future()
                conn = self._conn
                if conn is not None and conn.is_connected:
                    await conn.send_command("SUBSCRIBE", channel(room))
                # else: the listener subscribes every watched room when it (re)connects
            await asyncio.wait_for(asyncio.shield(confirmed), SUBSCRIBE_TIMEOUT)
            if room not in self._cursors:
                epoch, offset, _ = await self._read_room(room, -1, "")
                self._cursors.setdefault(room, Since(epoch, offset))
        except (TimeoutError, RedisError, OSError) as exc:
            await self.unwatch(room)
            raise BrokerUnavailable(f"could not subscribe to {room}: {type(exc).__name__}") from exc

    async def unwatch(self, room: str) -> None:
        count = self._watched.get(room, 0) - 1
        if count > 0:
            self._watched[room] = count
            return
        self._watched.pop(room, None)
        self._cursors.pop(room, None)
        future = self._confirmed.pop(room, None)
        if future is not None and not future.done():
            future.cancel()
        conn = self._conn
        if conn is not None and conn.is_connected:
            with contextlib.suppress(RedisError, OSError):
                await conn.send_command("UNSUBSCRIBE", channel(room))

    # -- the listener -------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, listen, and on ANY failure reconnect: this loop ends only when cancelled.

        A fault of Redis or of the network shows up in many forms (a reset, a timeout, a
        ``BrokerUnavailable`` from the gap fill, an error reply, a frame that does not parse);
        none of them may end the loop, or delivery stops for good while REST goes on.
        """
        attempt = 0
        connected_before = False
        while True:
            # The listener's own connection, outside the pool: it lives as long as it works.
            pool = self._client.connection_pool
            conn: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                if connected_before:
                    self.reconnects += 1
                    self._observe("broker.reconnected")
                    logger.info("redis pub/sub reconnected; resubscribing %d rooms", len(self._watched))
                connected_before = True
                attempt = 0
                await self._listen(conn)
            except asyncio.CancelledError:
                raise
            except EXPECTED_FAULTS as exc:
                if attempt == 0:
                    logger.warning("redis pub/sub connection lost: %s", type(exc).__name__)
            except Exception:
                logger.exception("redis pub/sub listener failed; reconnecting")
            finally:
                self._set_connected(False)
                self._conn = None
                for room, future in list(self._confirmed.items()):
                    if future.done():  # confirmed on the old connection: must be confirmed again
                        self._confirmed[room] = asyncio.get_running_loop().create_future()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            attempt += 1
            await asyncio.sleep(min(MAX_BACKOFF, 0.05 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.0))  # noqa: S311

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self._observe("broker.connected", float(connected))

    async def _listen(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        self._conn = conn
        waiting = {channel(room) for room in self._watched}
        if waiting:
            await conn.send_command("SUBSCRIBE", *waiting)
        else:
            # Subscribed to nothing yet: a plain connection answers PING with PONG, not ["pong", ""].
            await conn.send_command("SUBSCRIBE", CHANNEL_PREFIX)
            waiting = {CHANNEL_PREFIX}
        gaps_filled = False
        heard = loop.time()
        pinged: float | None = None
        while True:
            reply = await conn.read_response(timeout=min(1.0, self._watchdog), push_request=True)
            now = loop.time()
            if reply is None:
                if pinged is not None and now - pinged > self._watchdog:
                    raise ListenerSilent(f"no answer to PING for {self._watchdog:g}s")
                if pinged is None and now - heard > self._watchdog:
                    await conn.send_command("PING")
                    pinged = now
                continue
            heard, pinged = now, None
            kind = reply[0]
            if kind == b"message":
                await self._on_frame(reply[1].decode()[len(CHANNEL_PREFIX) :], reply[2])
            elif kind == b"subscribe":
                name = reply[1].decode()
                future = self._confirmed.get(name[len(CHANNEL_PREFIX) :])
                if future is not None and not future.done():
                    future.set_result(None)
                waiting.discard(name)
                if not waiting and not gaps_filled:
                    gaps_filled = True
                    for room in list(self._cursors):
                        await self._fill(room)
                    self._set_connected(True)

    async def _on_frame(self, room: str, frame: bytes) -> None:
        if room not in self._watched:
            return
        trace: bytes | None = None
        if frame.startswith(b"@"):  # a trace context ahead of the frame (see the module docstring)
            trace, _, frame = frame[1:].partition(b"\n")
        try:
            message = Message.parse(frame)
            if trace is not None:
                message.trace = trace.decode()
        except (ValueError, KeyError, TypeError):
            # Not one of ours (someone else published on the channel): skip it, keep listening.
            logger.warning("room %s: ignoring a frame that is not an event message", room)
            return
        cursor = self._cursors.get(room)
        if cursor is None or (message.epoch == cursor.epoch and message.offset == cursor.offset + 1):
            self._hand_over(message)
            return
        if message.epoch == cursor.epoch and message.offset <= cursor.offset:
            return  # already delivered (by a gap fill)
        await self._fill(room)
        cursor = self._cursors.get(room)
        if cursor is not None and (cursor.epoch != message.epoch or cursor.offset < message.offset):
            logger.warning("room %s: events before offset %d are no longer in history", room, message.offset)
            self._hand_over(message)

    async def _fill(self, room: str) -> None:
        """Deliver what the room's stream holds beyond the cursor (everything, in a new epoch)."""
        cursor = self._cursors.get(room)
        if cursor is None:
            return
        epoch, _, frames = await self._read_room(room, cursor.offset, cursor.epoch)
        if epoch != cursor.epoch:
            epoch, _, frames = await self._read_room(room, 0, epoch)
            cursor = Since(epoch, 0)
            self._cursors[room] = cursor
        for frame in frames:
            message = Message.parse(frame)
            if message.epoch == cursor.epoch and message.offset > cursor.offset:
                self._hand_over(message)
                cursor = self._cursors[room]

    def _hand_over(self, message: Message) -> None:
        self._cursors[message.room] = Since(message.epoch, message.offset)
        self._deliver(message)
