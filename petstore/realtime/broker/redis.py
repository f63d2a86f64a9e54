"""The Redis broker: history in one stream per room, fan-out between instances by pub/sub.

Keys of a room ``R``, all in one hash slot (the ``{R}`` hash tag), so a room lives on one shard of
a Redis Cluster and its script never crosses slots:

- ``petstore:{R}:meta``    hash ``epoch``, ``offset``: the room's position.
- ``petstore:{R}:log``     stream of the last ``history_size`` frames, entry id ``0-<offset>``.
- ``petstore:{R}:src``     sorted set outbox id → offset, so a retried publish is a no-op.
- channel ``petstore:{R}:events``: each frame, as published; an event whose outbox row kept a
  trace context goes as ``@<context JSON>\n<frame>`` instead (a frame starts with ``{`` and holds
  no newline), so other instances' traced delivery joins the request's trace. The stream keeps
  the frame alone: what clients read is the same either way.

All three keys get the history TTL on every publish, so a room expires as a whole; a missing
``meta`` (restart without persistence, expiry) starts a new epoch, which tells clients that
history was lost.

Publishing is one Lua script per publication. On one server (or a Sentinel-managed primary) it
takes all the rooms of the event at once: offsets, streams, dedup and ``PUBLISH`` happen
atomically or not at all. On a Redis Cluster the same script runs room by room, each in its own
slot with ``SPUBLISH`` (sharded pub/sub, Redis 7): every room keeps its own offsets and its own
exactly-once (the ``src`` set), and within a room events keep the outbox's order (a room's
publications go one after another); across rooms on different shards no order holds: a client
watching two rooms may see an event of one before an earlier event of the other.

Each instance listens to the rooms its local clients watch, and only to those, on *links*: one
pub/sub connection to the one server, or on a cluster one per primary that owns a watched room
(``SSUBSCRIBE``), so an instance hears only its rooms, each from the shard that owns it, and
adding shards adds capacity. A link that breaks (or goes silent: the watchdog pings it and gives
up when no answer comes) reconnects with backoff and jitter, resubscribes, and fills every room's
gap from its stream, so a client that stays connected misses nothing. On a cluster a broken link
first asks the cluster where its rooms are now (a failover promoted a replica), and a room whose
slot migrated away (the server says ``sunsubscribe``) moves to the link of its new owner, which
fills its gap the same way. Any failure on the way ends in a reconnect, never in the end of a
link; :func:`~petstore.realtime.supervisor.supervise` restarts one should it end all the same.
``connected`` is True while every link is subscribed and caught up. A link speaks to its
connection directly (redis-py's ``Connection``), because redis-py's ``PubSub`` reconnects and
resubscribes on its own, which would hide exactly the gap to fill.

A failover (Sentinel, or a replica promoted in a cluster) may lose the primary's last writes: Redis
replicates asynchronously, and clients may have received events the replica never got. New
events must not then reuse those offsets in the same epoch, or a client coming back with
``since`` would be told ``recovered: true`` over a gap. Two guards:

- ``meta`` keeps the ``lineage`` of the server that last wrote the room (its ``master_replid``).
  A promoted replica's previous replication id (``master_replid2``) is its old primary's: the
  first publish to, or read of, a room written there starts a new epoch, since nothing on the
  new primary tells whether the room's last entries arrived. (A server restarted from its own
  append-only file has a new replication id but no previous one: its rooms go on.)
- The gap fill checks that the room's history still holds what this instance delivered: when the
  room's offset went back, or the entry at the last delivered offset is not the frame delivered,
  the room starts a new epoch (atomically, once for all instances).

Clients learn that history was lost from the epoch, never from a silent gap.
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

import redis.exceptions
from redis.asyncio import RedisCluster
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
from petstore.redis_client import Client, close, new_connection, request_client

logger = logging.getLogger("petstore.realtime.broker.redis")

#: KEYS: meta, log, src of each room. ARGV: the frame's tail, the history size, the TTL, the outbox
#: id, the trace context ('' for none), the publish command (PUBLISH, or SPUBLISH on a cluster),
#: then each room's JSON name, channel and fresh epoch. Returns each room's offset (0: a repeat).
PUBLISH = """
local tail, maxlen, ttl, source, trace, command = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local replication = redis.call('INFO', 'replication')
local lineage = string.match(replication, 'master_replid:(%w+)')
local previous = string.match(replication, 'master_replid2:(%w+)')
local offsets = {}
for i = 0, (#KEYS / 3) - 1 do
  local meta, log, src = KEYS[i * 3 + 1], KEYS[i * 3 + 2], KEYS[i * 3 + 3]
  local room, channel, fresh = ARGV[7 + i * 3], ARGV[8 + i * 3], ARGV[9 + i * 3]
  local epoch = redis.call('HGET', meta, 'epoch')
  local written = redis.call('HGET', meta, 'lineage')
  if epoch and written == previous and written ~= lineage then
    epoch = false  -- written by the primary this server replicated until its promotion: see the docstring
  end
  if not epoch then
    epoch = fresh
    redis.call('DEL', log, src)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0)
  end
  if written ~= lineage then
    redis.call('HSET', meta, 'lineage', lineage)
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
      redis.call(command, channel, frame)
    else
      redis.call(command, channel, '@' .. trace .. '\\n' .. frame)
    end
    offsets[#offsets + 1] = offset
  end
end
return offsets
"""

READ = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch then
  local written = redis.call('HGET', KEYS[1], 'lineage')
  if written then
    local replication = redis.call('INFO', 'replication')
    if written == string.match(replication, 'master_replid2:(%w+)') then
      epoch = false  -- written by the primary before a promotion (see the publish script)
    end
  end
end
if not epoch then
  epoch = ARGV[1]
  local lineage = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0, 'lineage', lineage)
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

#: The room's history diverged from what was delivered in epoch ARGV[1]: start epoch ARGV[2], unless
#: another instance did first (the epoch is no longer ARGV[1]). Returns the room's epoch now.
RESTART = """
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  local lineage = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'offset', 0, 'lineage', lineage)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return redis.call('HGET', KEYS[1], 'epoch')
"""

CHANNEL_PREFIX = "petstore:{"
CHANNEL_SUFFIX = "}:events"
#: What a link with no room yet subscribes to (one server only), so that it reads like any other.
IDLE_CHANNEL = "petstore:listener"
EMPTY_ROOM_TTL_SECONDS = 3600
SUBSCRIBE_TIMEOUT = 5.0
MAX_BACKOFF = 2.0
#: Tries again of a command whose connection broke (a restart): not an outage yet.
RETRIES = 2
#: A cluster's slot map is read again at most this often (seconds).
TOPOLOGY_EVERY = 1.0
#: Rooms published to at once on a cluster: well inside the client's connections per node.
PUBLISHING_AT_ONCE = 16


async def _retrying(error: Exception) -> None:
    """Before a command is tried again: nothing to do (its connection was already dropped)."""


def keys(room: str) -> list[str]:
    return [f"petstore:{{{room}}}:meta", f"petstore:{{{room}}}:log", f"petstore:{{{room}}}:src"]


def channel(room: str) -> str:
    """The room's pub/sub channel, in the slot of its keys (a sharded channel on a cluster)."""
    return CHANNEL_PREFIX + room + CHANNEL_SUFFIX


def room_of(name: str) -> str | None:
    """The room a channel name is for; None for any other channel."""
    if name.startswith(CHANNEL_PREFIX) and name.endswith(CHANNEL_SUFFIX):
        return name[len(CHANNEL_PREFIX) : -len(CHANNEL_SUFFIX)]
    return None


class ListenerSilent(PetstoreError):
    """The pub/sub connection did not answer the watchdog's ping in time."""


#: What a Redis or network fault looks like to a link: logged in one line, then reconnect.
EXPECTED_FAULTS = (RedisError, OSError, TimeoutError, ListenerSilent, BrokerUnavailable)


class RedisBroker:
    name = "redis"

    def __init__(
        self,
        settings: Settings,
        deliver: Deliver,
        observe: Observe,
        *,
        client: Client | None = None,
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
        self._client: Client = own
        self._cluster = isinstance(own, RedisCluster)
        self._publish_command = "SPUBLISH" if self._cluster else "PUBLISH"
        # A command that meets a connection broken by a Redis restart is tried again, with backoff,
        # on a fresh one: every command here is safe to repeat (publishing a source twice is a
        # no-op). The shared pool retries once at once; this rides over a restart a little longer.
        retried: tuple[type[RedisError], ...] = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        if self._cluster:
            # A slot being migrated or a shard being failed over answers these for a moment.
            retried += (redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)
        self._retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES, supported_errors=retried)
        self._publish = self._client.register_script(PUBLISH)
        self._read = self._client.register_script(READ)
        self._restart = self._client.register_script(RESTART)
        self._watched: dict[str, int] = {}
        self._cursors: dict[str, Since] = {}
        #: The frame last delivered in each watched room, to tell that its history still holds it.
        self._last: dict[str, str] = {}
        #: Links by node name (``host:port``); the one server's is ``""``.
        self._links: dict[str, _Link] = {}
        self._room_links: dict[str, _Link] = {}
        self._started = False
        self._topology_lock = asyncio.Lock()
        self._topology_read = -TOPOLOGY_EVERY
        #: A cluster's publications in flight at once (each takes a connection to its room's node).
        self._in_flight = asyncio.Semaphore(PUBLISHING_AT_ONCE)
        self.reconnects = 0
        #: True while every link is subscribed and delivering (readiness, ``petstore_broker_connected``).
        self.connected = False

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._observe("broker.connected", 0.0)
        self._started = True
        if not self._cluster:
            self._link("")  # one server: one link, subscribed (to nothing yet) from the start
        else:
            self._update_connected()

    async def stop(self) -> None:
        self._started = False
        tasks = [link.task for link in self._links.values() if link.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Whatever the tasks end with, shutdown goes on (the supervisor lets nothing else out).
            await asyncio.wait(tasks)
        self._links.clear()
        self._room_links.clear()
        if self._owns_client:
            await close(self._client)

    async def ping(self) -> None:
        await self._client.ping()

    @property
    def _conn(self) -> AbstractConnection | None:
        """The one server's link's connection (None while it reconnects)."""
        link = self._links.get("")
        return link.conn if link is not None else None

    # -- publishing and history ---------------------------------------------------------------

    async def publish(self, room_names: list[str], event: str, data_json: str, ts: str, source: int) -> None:
        await self.publish_all([Publication(room_names, event, data_json, ts, source)])

    async def publish_all(self, publications: Sequence[Publication]) -> None:
        """One script call per publication, all in one pipeline (one round trip); on a cluster, one
        call per room of each, each room's in order, the rooms' at once."""
        try:
            if self._cluster:
                await self._publish_by_room(publications)
            else:
                await self._retry.call_with_retry(lambda: self._publish_pipelined(publications), _retrying)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis publish failed: {type(exc).__name__}") from exc

    async def _publish_pipelined(self, publications: Sequence[Publication]) -> None:
        calls = [self._script_call(publication, publication.rooms) for publication in publications]
        if len(calls) == 1:
            await self._publish(*calls[0])
            return
        assert not isinstance(self._client, RedisCluster)
        async with self._client.pipeline(transaction=False) as pipe:
            for call_keys, call_args in calls:
                await self._publish(call_keys, call_args, client=pipe)
            await pipe.execute()

    async def _publish_by_room(self, publications: Sequence[Publication]) -> None:
        by_room: dict[str, list[tuple[list[str], list[str | int]]]] = {}
        for publication in publications:
            for room in publication.rooms:
                by_room.setdefault(room, []).append(self._script_call(publication, [room]))

        async def in_order(calls: list[tuple[list[str], list[str | int]]]) -> None:
            async with self._in_flight:
                for call_keys, call_args in calls:

                    async def once(k: list[str] = call_keys, a: list[str | int] = call_args) -> Any:
                        return await self._publish(k, a)

                    await self._retry.call_with_retry(once, _retrying)

        results = await asyncio.gather(*(in_order(calls) for calls in by_room.values()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _script_call(self, publication: Publication, rooms: Sequence[str]) -> tuple[list[str], list[str | int]]:
        """The keys and arguments of the publish script for ``rooms`` of one publication."""
        args: list[str | int] = [
            frame_tail(publication.event, publication.data_json, publication.ts),
            self._size,
            self._ttl,
            publication.source,
            publication.trace or "",
            self._publish_command,
        ]
        all_keys: list[str] = []
        for room in rooms:
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

    async def _start_new_epoch(self, room: str, old: str) -> None:
        try:
            args: list[str | int] = [old, uuid.uuid4().hex, self._ttl]
            await self._retry.call_with_retry(lambda: self._restart(keys=keys(room), args=args), _retrying)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"redis restart of an epoch failed: {type(exc).__name__}") from exc

    # -- watching rooms -----------------------------------------------------------------------

    async def watch(self, room: str) -> None:
        count = self._watched.get(room, 0)
        self._watched[room] = count + 1
        try:
            await self._subscribed(room)
            if room not in self._cursors:
                epoch, offset, _ = await self._read_room(room, -1, "")
                self._cursors.setdefault(room, Since(epoch, offset))
        except (TimeoutError, RedisError, OSError) as exc:
            await self.unwatch(room)
            raise BrokerUnavailable(f"could not subscribe to {room}: {type(exc).__name__}") from exc

    async def _subscribed(self, room: str) -> None:
        """Until the link that holds ``room`` has its subscription confirmed, within SUBSCRIBE_TIMEOUT.

        The room may move to another link meanwhile (a failover, a slot migration: ``_rehome``),
        which cancels the old link's confirmation: the wait goes on for the new link's. Only a
        cancellation of this task itself is one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SUBSCRIBE_TIMEOUT
        while True:
            link = self._room_links.get(room)
            if link is None:
                link = await self._home(room)
                await link.add(room, fill=False)
            confirmed = link.confirmation(room)
            try:
                await asyncio.wait_for(asyncio.shield(confirmed), max(0.0, deadline - loop.time()))
                return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not confirmed.cancelled() or (task is not None and task.cancelling()):
                    raise
                # dropped by the link it was on: the room moved

    async def unwatch(self, room: str) -> None:
        count = self._watched.get(room, 0) - 1
        if count > 0:
            self._watched[room] = count
            return
        self._watched.pop(room, None)
        self._cursors.pop(room, None)
        self._last.pop(room, None)
        link = self._room_links.pop(room, None)
        if link is not None:
            await link.remove(room)

    async def _home(self, room: str) -> _Link:
        """The link the room's events come on: the one server's, or its slot's primary's."""
        if not isinstance(self._client, RedisCluster):
            return self._link("")
        await self._client.initialize()
        node = self._client.get_node_from_key(channel(room))
        if node is None:
            raise redis.exceptions.ClusterDownError(f"no node serves the slot of room {room}")
        return self._link(node.name)

    def _link(self, name: str) -> _Link:
        link = self._links.get(name)
        if link is None or link.retired:
            link = self._links[name] = _Link(self, name)
            link.task = supervise(
                f"redis-broker-listener{':' + name if name else ''}",
                link.run,
                self._observe,
                stopping=lambda: link.retired,
            )
        return link

    async def _rehome(self, link: _Link, rooms: Sequence[str]) -> None:
        """On a cluster, after ``link`` lost its connection or was told a slot moved: ask the
        cluster where ``rooms`` are now and move those that went elsewhere to their owner's link,
        which subscribes them and fills their gap."""
        assert isinstance(self._client, RedisCluster)
        await self._refresh_topology()
        for room in rooms:
            if room not in self._watched or self._room_links.get(room) is not link:
                continue
            try:
                node = self._client.get_node_from_key(channel(room))
            except (RedisError, IndexError):
                continue  # the cluster does not know yet: the link tries again
            if node is not None and node.name != link.name:
                link.drop(room)
                owner = self._link(node.name)
                await owner.add(room, fill=True)
        if not link.rooms:
            link.retire()

    async def _refresh_topology(self) -> None:
        """Ask the cluster again which node serves which slot: at most once a second however many
        links want it (a refresh replaces the client's nodes, which commands in flight share)."""
        assert isinstance(self._client, RedisCluster)
        async with self._topology_lock:
            now = asyncio.get_running_loop().time()
            if now - self._topology_read < TOPOLOGY_EVERY:
                return
            self._topology_read = now
            with contextlib.suppress(*EXPECTED_FAULTS):
                await self._client.nodes_manager.initialize()

    def _update_connected(self) -> None:
        links = list(self._links.values())
        connected = self._started and all(link.connected for link in links) and (self._cluster or bool(links))
        if connected != self.connected:
            self.connected = connected
            self._observe("broker.connected", float(connected))

    # -- delivery -----------------------------------------------------------------------------

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
            if message.offset == cursor.offset and self._last.get(room, message.frame) != message.frame:
                await self._fill(room)  # the offset delivered, with other content: history diverged
            return  # else already delivered (by a gap fill)
        await self._fill(room)
        cursor = self._cursors.get(room)
        if cursor is None or cursor.epoch != message.epoch:
            # The fill read the room's epoch now: a frame of another one is of a superseded epoch
            # (late, from before a failover), and handing it over would take the room back.
            return
        if cursor.offset < message.offset:
            logger.warning("room %s: events before offset %d are no longer in history", room, message.offset)
            self._hand_over(message)

    async def _fill(self, room: str) -> None:
        """Deliver what the room's stream holds beyond the cursor (everything, in a new epoch),
        after checking that it still holds what was delivered (see the module docstring)."""
        cursor = self._cursors.get(room)
        if cursor is None:
            return
        last = self._last.get(room)
        # From the last delivered entry on, when there is one to check against.
        after = cursor.offset - 1 if last is not None and cursor.offset > 0 else cursor.offset
        epoch, offset, frames = await self._read_room(room, after, cursor.epoch)
        if epoch == cursor.epoch and self._diverged(cursor, offset, frames, last):
            logger.warning(
                "room %s: its history no longer holds offset %d as delivered (a failover lost writes): new epoch",
                room,
                cursor.offset,
            )
            await self._start_new_epoch(room, cursor.epoch)
            epoch, offset, frames = await self._read_room(room, 0, "")
        if epoch != cursor.epoch:
            epoch, _, frames = await self._read_room(room, 0, epoch)
            cursor = Since(epoch, 0)
            self._cursors[room] = cursor
        for frame in frames:
            # The cursor as it stands now, not as it stood before the read: another fill of the
            # room (its old link's and its new one's, when a slot moves) may have delivered some
            # of these frames while this one awaited, and a frame must not go out twice.
            cursor = self._cursors.get(room)
            if cursor is None:
                return  # unwatched meanwhile
            message = Message.parse(frame)
            if message.epoch == cursor.epoch and message.offset > cursor.offset:
                self._hand_over(message)

    @staticmethod
    def _diverged(cursor: Since, offset: int, frames: list[bytes], last: str | None) -> bool:
        if offset < cursor.offset:
            return True  # the room went back: what was delivered past its offset is gone
        if last is None or not frames:
            return False  # nothing to compare with (or trimmed away): trust the offsets
        first = Message.parse(frames[0])
        return first.offset == cursor.offset and first.frame != last

    def _hand_over(self, message: Message) -> None:
        self._cursors[message.room] = Since(message.epoch, message.offset)
        self._last[message.room] = message.frame
        self._deliver(message)


class _Link:
    """One pub/sub connection and the rooms heard on it: the one server's, or a cluster primary's."""

    def __init__(self, broker: RedisBroker, name: str) -> None:
        self.broker = broker
        #: ``host:port`` of the cluster node, or ``""`` for the one server.
        self.name = name
        self.sharded = broker._cluster
        self.subscribe, self.unsubscribe = (
            ("SSUBSCRIBE", "SUNSUBSCRIBE") if self.sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        )
        self.rooms: set[str] = set()
        #: Per room, resolved once the server confirmed its subscription on the current connection.
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        #: Rooms that came from another link: their gap is filled once they are confirmed here.
        self._to_fill: set[str] = set()
        self.conn: AbstractConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        self.retired = False

    # -- rooms --------------------------------------------------------------------------------

    def confirmation(self, room: str) -> asyncio.Future[None]:
        future = self._confirmed.get(room)
        if future is None:
            future = self._confirmed[room] = asyncio.get_running_loop().create_future()
        return future

    async def add(self, room: str, *, fill: bool) -> None:
        self.rooms.add(room)
        self.broker._room_links[room] = self
        self.confirmation(room)
        if fill:
            self._to_fill.add(room)
        conn = self.conn
        if conn is not None and conn.is_connected:
            with contextlib.suppress(RedisError, OSError):  # a broken connection resubscribes all
                await conn.send_command(self.subscribe, channel(room))
        # else: the link subscribes every room when it (re)connects

    def drop(self, room: str) -> None:
        """Forget the room without telling the server (it moved to another link)."""
        self.rooms.discard(room)
        self._to_fill.discard(room)
        future = self._confirmed.pop(room, None)
        if future is not None and not future.done():
            future.cancel()

    async def remove(self, room: str) -> None:
        self.drop(room)
        conn = self.conn
        if conn is not None and conn.is_connected:
            with contextlib.suppress(RedisError, OSError):
                await conn.send_command(self.unsubscribe, channel(room))
        if self.sharded and not self.rooms:
            self.retire()

    def retire(self) -> None:
        """A cluster link without rooms ends (its node may be gone for good)."""
        self.retired = True
        if self.broker._links.get(self.name) is self:
            del self.broker._links[self.name]
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self._set_connected(False)
        self.broker._update_connected()

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.broker._update_connected()

    # -- the connection -----------------------------------------------------------------------

    def _new_connection(self) -> AbstractConnection:
        client = self.broker._client
        if not isinstance(client, RedisCluster):
            return new_connection(client.connection_pool)
        node = client.get_node(node_name=self.name)
        if node is None:
            raise redis.exceptions.ConnectionError(f"cluster node {self.name} is no longer known")
        connection: AbstractConnection = node.connection_class(**node.connection_kwargs)
        return connection

    async def run(self) -> None:
        """Connect, listen, and on ANY failure reconnect: ends only when cancelled or retired.

        A fault of Redis or of the network shows up in many forms (a reset, a timeout, a
        ``BrokerUnavailable`` from the gap fill, an error reply, a frame that does not parse);
        none of them may end the loop, or delivery stops for good while REST goes on.
        """
        attempt = 0
        connected_before = False
        broker = self.broker
        while not self.retired:
            conn: AbstractConnection | None = None
            homeless = False
            try:
                conn = self._new_connection()
                await conn.connect()  # type: ignore[no-untyped-call]
                if connected_before:
                    broker.reconnects += 1
                    broker._observe("broker.reconnected")
                    logger.info("redis pub/sub reconnected; resubscribing %d rooms", len(self.rooms))
                connected_before = True
                attempt = 0
                await self._listen(conn)
            except asyncio.CancelledError:
                raise
            except EXPECTED_FAULTS as exc:
                # An error reply (MOVED, ASK, CLUSTERDOWN...) from a node that answers: the slots moved.
                homeless = isinstance(exc, redis.exceptions.ResponseError)
                if attempt == 0:
                    logger.warning("redis pub/sub connection lost: %s", type(exc).__name__)
            except Exception:
                logger.exception("redis pub/sub listener failed; reconnecting")
            finally:
                self.conn = None
                self._set_connected(False)
                for room, future in list(self._confirmed.items()):
                    if future.done():  # confirmed on the old connection: must be confirmed again
                        self._confirmed[room] = asyncio.get_running_loop().create_future()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
            if self.sharded and not self.retired and (attempt > 0 or homeless):
                # Connecting to the node failed again: it may have failed over or given its slots
                # away. Follow the rooms there.
                await broker._rehome(self, sorted(self.rooms))
                if self.retired:
                    return
            attempt += 1
            await asyncio.sleep(min(MAX_BACKOFF, 0.05 * 2 ** min(attempt, 6)) * random.uniform(0.5, 1.0))  # noqa: S311

    async def _listen(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        broker = self.broker
        self.conn = conn
        waiting = {channel(room) for room in self.rooms}
        if waiting and self.sharded:
            # SSUBSCRIBE takes the channels of one slot only (CROSSSLOT otherwise): one per room,
            # sent together.
            await conn.send_packed_command(conn.pack_commands([(self.subscribe, name) for name in waiting]))
        elif waiting:
            await conn.send_command(self.subscribe, *waiting)
        elif not self.sharded:
            # Subscribed to nothing yet: a plain connection answers PING with PONG, not ["pong", ""].
            await conn.send_command("SUBSCRIBE", IDLE_CHANNEL)
            waiting = {IDLE_CHANNEL}
        else:
            self.retire()
            return
        # Every room of this connection is filled once all are subscribed: a reconnect's gap.
        self._to_fill.clear()
        gaps_filled = False
        heard = loop.time()
        pinged: float | None = None
        while True:
            reply = await conn.read_response(timeout=min(1.0, broker._watchdog), push_request=True)
            now = loop.time()
            if reply is None:
                if pinged is not None and now - pinged > broker._watchdog:
                    raise ListenerSilent(f"no answer to PING for {broker._watchdog:g}s")
                if pinged is None and now - heard > broker._watchdog:
                    await conn.send_command("PING")
                    pinged = now
                continue
            heard, pinged = now, None
            kind = reply[0]
            if kind in (b"message", b"smessage"):
                room = room_of(reply[1].decode())
                if room is not None and room in self.rooms:
                    await broker._on_frame(room, reply[2])
            elif kind in (b"subscribe", b"ssubscribe"):
                name = reply[1].decode()
                room = room_of(name)
                future = self._confirmed.get(room) if room is not None else None
                if future is not None and not future.done():
                    future.set_result(None)
                waiting.discard(name)
                if room is not None and room in self._to_fill:
                    self._to_fill.discard(room)
                    await broker._fill(room)
                if not waiting and not gaps_filled:
                    gaps_filled = True
                    for each in sorted(self.rooms):
                        await broker._fill(each)
                    self._set_connected(True)
            elif kind == b"sunsubscribe":
                # The server dropped a room we still watch: its slot migrated to another shard.
                room = room_of(reply[1].decode())
                if room is not None and room in self.rooms:
                    logger.info("room %s: its slot moved off %s; following it", room, self.name)
                    await broker._rehome(self, [room])
                    if self.retired:
                        return
