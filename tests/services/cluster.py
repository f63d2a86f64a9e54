"""A Redis Cluster of Debian's redis-server processes on free loopback ports, for the cluster tests.

:class:`RedisClusterSet` starts N primaries (3 by default), with one replica each when asked,
every one a :class:`ClusterNode` (a :class:`~tests.services.base.Service` of its own, without
persistence, its ``nodes.conf`` in its temporary directory), joins them with
``redis-cli --cluster create`` and returns once every node says ``cluster_state:ok``, every slot
is served, every node sees the same owners and every replica's link to its primary is up.

What a test does to it: :meth:`~RedisClusterSet.kill` a node (SIGKILL, as a crash would),
:meth:`~RedisClusterSet.wait_promoted` for a replica to take over, and
:meth:`~RedisClusterSet.migrate_slot` to move one slot, its keys included, to another primary
while clients use it (the way ``redis-cli --cluster reshard`` does: IMPORTING, MIGRATING,
``MIGRATE`` of the keys, then ``SETSLOT NODE`` on every primary). Every wait has a deadline.

The nodes speak RESP2 to :meth:`ClusterNode.command`, a client of a few lines with no library,
so that a test can ask Redis what it sees (``PUBSUB SHARDCHANNELS``, ``CLUSTER SLOTS``) beside
whatever client the code under test uses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import BinaryIO, Self, TypeAlias

from .base import HOST, START_TIMEOUT, Service, ServiceError, free_port, require_binary, wait_until

SLOTS = 16384
#: What ``--cluster-node-timeout`` is, in ms: a primary unreachable this long is failing, and its
#: replica is promoted about a second or two later.
NODE_TIMEOUT_MS = 1000
#: A failover: the node timeout, the failure reports, the election (delays of up to a second or so).
FAILOVER_TIMEOUT = 20.0
#: Keys moved per ``MIGRATE`` call while a slot migrates.
MIGRATE_BATCH = 100

#: A RESP2 reply: a status or bulk string, an integer, nil, or an array of these.
Reply: TypeAlias = bytes | int | list["Reply"] | None


class ReplyError(ServiceError):
    """Redis answered with an error (``-MOVED ...``, ``-ERR ...``): the text is in ``reply``."""

    def __init__(self, command: str, reply: str) -> None:
        super().__init__(f"redis {command} failed: {reply}")
        self.reply = reply


def _read_reply(stream: BinaryIO, command: str) -> Reply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ServiceError(f"redis {command}: connection closed mid-reply ({line!r})")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else stream.read(size + 2)[:size]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream, command) for _ in range(count)]
    if kind == b"-":
        raise ReplyError(command, rest.decode(errors="replace"))
    raise ServiceError(f"redis {command}: unexpected reply {line!r}")


def _encode(args: Sequence[str | bytes | int]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts += [f"${len(data)}\r\n".encode(), data, b"\r\n"]
    return b"".join(parts)


def crc16(data: bytes) -> int:
    """CRC16-XMODEM (polynomial 0x1021, initial value 0), which Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def keyslot(name: str | bytes) -> int:
    """The slot of a key or shard channel: CRC16 of its hash tag (``{...}``, when not empty) mod 16384."""
    key = name.encode() if isinstance(name, str) else name
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc16(key) % SLOTS


def _text(reply: Reply) -> str:
    if not isinstance(reply, bytes):
        raise ServiceError(f"expected a string reply, got {reply!r}")
    return reply.decode()


def _fields(reply: Reply) -> dict[str, str]:
    """``CLUSTER INFO`` / ``INFO`` lines ``name:value`` as a dict."""
    return dict(line.split(":", 1) for line in _text(reply).splitlines() if ":" in line and not line.startswith("#"))


class ClusterNode(Service):
    """One ``redis-server --cluster-enabled yes`` on a free port (its bus on another), without persistence.

    Its cluster state (``nodes.conf``) lives in its temporary directory, so a node killed and
    started again comes back as the same node id and rejoins (as a replica, if it was failed over).
    """

    name = "redis-cluster-node"

    def __init__(
        self,
        port: int | None = None,
        bus_port: int | None = None,
        *,
        password: str | None = None,
        binary: str = "redis-server",
    ) -> None:
        self.binary = require_binary(binary)
        self.password = password
        super().__init__(port, "redis-cluster")
        # The default bus port is port + 10000, which may be taken or past 65535: ask for one.
        self.bus_port = bus_port if bus_port is not None else free_port()
        self._node_id: str | None = None

    def __repr__(self) -> str:
        return f"<ClusterNode {HOST}:{self.port} {self._node_id or '?'}>"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        proc = self._child.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> Self:
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, "--protected-mode", "yes"]
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", str(self.workdir / "nodes.conf")]
        argv += ["--cluster-port", str(self.bus_port), "--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        argv += ["--appendonly", "no", "--save", "", "--dir", str(self.workdir), "--daemonize", "no"]
        # A replica's first full sync starts at once (the default waits 5 s for more replicas).
        argv += ["--repl-diskless-sync-delay", "0"]
        if self.password is not None:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        self._child.spawn(argv, cwd=self.workdir)
        self._wait_ready(self._pong, START_TIMEOUT)
        self._node_id = _text(self.command("CLUSTER", "MYID"))
        return self

    @property
    def node_id(self) -> str:
        if self._node_id is None:
            raise ServiceError(f"{self!r} was never started")
        return self._node_id

    def command(self, *args: str | bytes | int, timeout: float = 5.0) -> Reply:
        """Send one command on a fresh connection (authenticated first when the node has a
        password) and return its reply; an error reply raises :class:`ReplyError`."""
        name = str(args[0]) if args else "?"
        with socket.create_connection((HOST, self.port), timeout=timeout) as sock:
            stream = sock.makefile("rb")
            if self.password is not None:
                sock.sendall(_encode(["AUTH", self.password]))
                _read_reply(stream, "AUTH")
            sock.sendall(_encode(args))
            return _read_reply(stream, name)

    def info(self, section: str = "") -> dict[str, str]:
        return _fields(self.command("INFO", section) if section else self.command("INFO"))

    def cluster_info(self) -> dict[str, str]:
        return _fields(self.command("CLUSTER", "INFO"))

    def role(self) -> tuple[str, int | None]:
        """``("master", None)``, or ``("slave", port of its primary)``, as ``ROLE`` says."""
        reply = self.command("ROLE")
        assert isinstance(reply, list)
        role = _text(reply[0])
        return role, (int(reply[2]) if role == "slave" and isinstance(reply[2], int) else None)

    @property
    def is_primary(self) -> bool:
        return self.role()[0] == "master"

    def slot_owners(self) -> dict[int, int]:
        """What this node believes: slot → port of its primary, from ``CLUSTER SLOTS``."""
        owners: dict[int, int] = {}
        reply = self.command("CLUSTER", "SLOTS")
        assert isinstance(reply, list)
        for entry in reply:
            assert isinstance(entry, list)
            first, last, primary = entry[0], entry[1], entry[2]
            assert isinstance(first, int) and isinstance(last, int) and isinstance(primary, list)
            port = primary[1]
            assert isinstance(port, int)
            owners.update(dict.fromkeys(range(first, last + 1), port))
        return owners

    def _pong(self) -> bool:
        try:
            return self.command("PING") == b"PONG"
        except (OSError, ServiceError):
            return False  # not listening yet


class RedisClusterSet:
    """N primaries, optionally one replica each, joined into one cluster; all stop at ``close()``.

    ``with RedisClusterSet(replicas=True) as cluster:`` then give petstore ``cluster.url``.
    """

    def __init__(self, primaries: int = 3, *, replicas: bool = False, password: str | None = None) -> None:
        if primaries < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 primaries")
        self.password = password
        self.replicas_per_primary = 1 if replicas else 0
        self.nodes: list[ClusterNode] = []
        taken: set[int] = set()
        for _ in range(primaries * (1 + self.replicas_per_primary)):
            port, bus = self._distinct_port(taken), self._distinct_port(taken)
            self.nodes.append(ClusterNode(port, bus, password=password))
        self.redis_cli = require_binary("redis-cli")

    @staticmethod
    def _distinct_port(taken: set[int]) -> int:
        # free_port() may hand out a port twice in a row once the first is closed again.
        port = wait_until(lambda: (p := free_port()) not in taken and p, 5.0, "a free port not yet handed out")
        taken.add(port)
        return port

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        try:
            for node in self.nodes:
                node.start()
            argv = [self.redis_cli]
            if self.password is not None:
                argv += ["-a", self.password, "--no-auth-warning"]
            argv += ["--cluster", "create", *(node.address for node in self.nodes)]
            argv += ["--cluster-replicas", str(self.replicas_per_primary), "--cluster-yes"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
            if done.returncode != 0:
                raise ServiceError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
            self.wait_stable(START_TIMEOUT, all_known=True)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        failures: list[BaseException] = []
        for node in self.nodes:
            try:
                node.close()
            except Exception as exc:  # stop the others all the same
                failures.append(exc)
        if failures:
            raise failures[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- what petstore is given ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis+cluster://[:PW@]127.0.0.1:p1,127.0.0.1:p2,...``: every node is a startup node."""
        auth = f":{self.password}@" if self.password is not None else ""
        return "redis+cluster://" + auth + ",".join(node.address for node in self.nodes)

    # -- the topology -------------------------------------------------------------------------

    @property
    def running(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.running]

    @property
    def primaries(self) -> list[ClusterNode]:
        """The running nodes that are primaries right now, in the order of ``nodes``."""
        return [node for node in self.running if node.is_primary]

    @property
    def replicas(self) -> list[ClusterNode]:
        return [node for node in self.running if not node.is_primary]

    def node_on(self, port: int) -> ClusterNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node of this cluster listens on {port}")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        for node in self.running:
            if node is not primary and node.role() == ("slave", primary.port):
                return node
        raise ServiceError(f"{primary!r} has no running replica")

    @staticmethod
    def keyslot(name: str | bytes) -> int:
        return keyslot(name)

    def primary_for_slot(self, slot: int) -> ClusterNode:
        """The primary that serves ``slot``, as a running primary sees it."""
        for node in self.primaries:
            return self.node_on(node.slot_owners()[slot])
        raise ServiceError("no primary is running")

    def primary_for_key(self, name: str | bytes) -> ClusterNode:
        return self.primary_for_slot(keyslot(name))

    def keys_in_slot(self, slot: int) -> list[bytes]:
        keys = self.primary_for_slot(slot).command("CLUSTER", "GETKEYSINSLOT", slot, 1_000_000)
        assert isinstance(keys, list)
        return [key for key in keys if isinstance(key, bytes)]

    # -- waits --------------------------------------------------------------------------------

    def stable(self, *, all_known: bool = False) -> bool:
        """Every running node says ok with every slot served, they agree on who owns each slot,
        every running replica's link is up (and with ``all_known``, every node knows every other)."""
        try:
            maps = []
            for node in self.running:
                info = node.cluster_info()
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                    return False
                if all_known and info.get("cluster_known_nodes") != str(len(self.nodes)):
                    return False
                role, _ = node.role()
                if role == "slave" and node.info("replication").get("master_link_status") != "up":
                    return False
                maps.append(node.slot_owners())
            running = {node.port for node in self.running}
            return bool(maps) and all(m == maps[0] for m in maps) and set(maps[0].values()) <= running
        except (OSError, ServiceError):
            return False  # a node being restarted, or one that has just gone

    def wait_stable(self, timeout: float = FAILOVER_TIMEOUT, *, all_known: bool = False) -> None:
        self._wait(lambda: self.stable(all_known=all_known), timeout, "the cluster to be ok on every node")

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL, as a crash would: no goodbye to the other nodes, whose failure detection must notice."""
        node.kill()

    @contextlib.contextmanager
    def frozen(self, node: ClusterNode) -> Iterator[None]:
        """SIGSTOP for the duration of the block, SIGCONT at its end whatever happens in it: a
        replica frozen so falls behind its primary, as one lagging on a slow link would."""
        pid = node.pid
        if pid is None:
            raise ServiceError(f"{node!r} is not running")
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def wait_promoted(self, replica: ClusterNode, timeout: float = FAILOVER_TIMEOUT) -> None:
        """Wait until ``replica`` is a primary and the cluster is ok again around it."""
        self._wait(lambda: replica.running and replica.is_primary, timeout, f"{replica!r} to be promoted")
        self.wait_stable(timeout)

    def migrate_slot(self, slot: int, src: ClusterNode, dst: ClusterNode, timeout: float = START_TIMEOUT) -> int:
        """Move ``slot`` and its keys from ``src`` to ``dst`` while clients use them; returns the
        number of keys moved, once every running node sees ``dst`` as its owner.

        The steps of ``redis-cli --cluster reshard``, which a test may also take one at a time
        (and use the cluster in between): :meth:`begin_migration`, :meth:`move_keys`,
        :meth:`finish_migration`.
        """
        self.begin_migration(slot, src, dst)
        moved = self.move_keys(slot, src, dst)
        self.finish_migration(slot, src, dst, timeout)
        return moved

    def begin_migration(self, slot: int, src: ClusterNode, dst: ClusterNode) -> None:
        """IMPORTING on ``dst``, then MIGRATING on ``src``: ``src`` still serves the keys it has,
        and answers ``ASK`` (go to ``dst``) for the others, ``TRYAGAIN`` for a command on several
        keys of which some have moved."""
        if src.slot_owners().get(slot) != src.port:
            raise ServiceError(f"slot {slot} is not on {src!r}")
        dst.command("CLUSTER", "SETSLOT", slot, "IMPORTING", src.node_id)
        src.command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst.node_id)

    def move_keys(self, slot: int, src: ClusterNode, dst: ClusterNode) -> int:
        """``MIGRATE`` every key of the slot from ``src`` to ``dst``, in batches; how many moved."""
        auth: list[str | bytes | int] = ["AUTH", self.password] if self.password is not None else []
        moved = 0
        while True:
            keys = src.command("CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH)
            assert isinstance(keys, list)
            batch = [key for key in keys if isinstance(key, bytes)]
            if not batch:
                return moved
            src.command("MIGRATE", HOST, dst.port, "", 0, 5000, *auth, "KEYS", *batch, timeout=10.0)
            moved += len(batch)

    def finish_migration(self, slot: int, src: ClusterNode, dst: ClusterNode, timeout: float = START_TIMEOUT) -> None:
        """Any key written to ``src`` meanwhile moved too, then ``SETSLOT NODE`` on ``dst``,
        ``src`` and the other primaries (``src`` then unsubscribes its clients from the slot's
        shard channels); returns once every running node sees ``dst`` as the owner."""
        self.move_keys(slot, src, dst)
        for node in [dst, src, *(n for n in self.primaries if n not in (src, dst))]:
            node.command("CLUSTER", "SETSLOT", slot, "NODE", dst.node_id)
        self._wait(
            lambda: all(self._owner_seen(node, slot) == dst.port for node in self.running),
            timeout,
            f"every node to see slot {slot} on {dst!r}",
        )

    @staticmethod
    def _owner_seen(node: ClusterNode, slot: int) -> int | None:
        try:
            return node.slot_owners().get(slot)
        except (OSError, ServiceError):
            return None

    def _wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        try:
            wait_until(predicate, timeout, what, interval=0.05)
        except TimeoutError as exc:
            raise ServiceError(f"{exc}; {self.describe()}") from None

    def describe(self) -> str:
        """One line per node (role, state, slot ranges) and each log's tail: for failure messages."""
        lines = []
        for node in self.nodes:
            try:
                state = node.cluster_info().get("cluster_state") if node.running else "down"
                role = node.role() if node.running else None
            except (OSError, ServiceError) as exc:
                state, role = f"unreachable ({exc})", None
            lines.append(f"{node!r}: {role} {state}\n{node.logtail(8)}")
        return "\n".join(lines)


def shard_channels(nodes: Iterable[ClusterNode]) -> dict[int, set[str]]:
    """Each node's ``PUBSUB SHARDCHANNELS``, by port."""
    channels: dict[int, set[str]] = {}
    for node in nodes:
        reply = node.command("PUBSUB", "SHARDCHANNELS")
        assert isinstance(reply, list)
        channels[node.port] = {_text(name) for name in reply}
    return channels


def shard_numsub(node: ClusterNode, channels: Sequence[str]) -> dict[str, int]:
    """``PUBSUB SHARDNUMSUB`` of these channels on one node: channel → subscribers there."""
    reply = node.command("PUBSUB", "SHARDNUMSUB", *channels)
    assert isinstance(reply, list)
    pairs = iter(reply)
    counts: dict[str, int] = {}
    for name, count in zip(pairs, pairs, strict=True):
        assert isinstance(count, int)
        counts[_text(name)] = count
    return counts
