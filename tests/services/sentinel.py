"""A replicated Redis watched by three Debian ``redis-sentinel`` processes, for failover tests.

:class:`RedisSentinelSet` starts a primary ``redis-server``, one replica of it
(``--replicaof``), then three sentinels that monitor the primary under one service name with a
quorum of 2, each on a free loopback port with its config file in a temporary directory (a
sentinel rewrites its file as it learns, so the file must be its own and writable). It returns
once the replica is in sync and every sentinel knows the primary, the replica and the two other
sentinels: a failover can then happen at once.

    with RedisSentinelSet() as sentinels:
        url = sentinels.url                  # redis+sentinel://127.0.0.1:P1,.../petstore
        sentinels.kill_primary()             # SIGKILL: a real crash
        sentinels.wait_promoted(timeout=20)  # every sentinel names the former replica

Every wait has a deadline (``wait_until``); a failure is a ``ServiceError`` or ``TimeoutError``
carrying the tails of the logs concerned. Everything stops at ``close()`` (or the end of the
``with`` block), sentinels first so that none of them reacts to the servers going away.
"""

from __future__ import annotations

import socket
from types import TracebackType
from typing import IO, Self
from urllib.parse import quote, urlencode

from .base import HOST, START_TIMEOUT, Service, ServiceError, require_binary, wait_until
from .redis import RedisServer

#: A RESP reply as parsed here: a status or bulk string, an integer, nil, or an array of these.
Reply = bytes | int | None | list["Reply"]

#: What the sentinels are told (milliseconds): the primary counts as down after this long without
#: an answer; a failover that has not finished within the timeout is abandoned and tried again.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def resp_command(port: int, *args: str, password: str | None = None, timeout: float = 5.0) -> Reply:
    """Send one command to ``127.0.0.1:port`` on a fresh connection (``AUTH password`` first when
    given) and parse the whole reply.

    Unlike :meth:`RedisServer.command` this reads arrays too (``SENTINEL master`` answers one).
    An error reply raises ``ServiceError``.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        stream = sock.makefile("rb")
        if password is not None:
            sock.sendall(_encode("AUTH", password))
            _read_reply(stream, "AUTH")
        sock.sendall(_encode(*args))
        return _read_reply(stream, args[0])


def _encode(*args: str) -> bytes:
    return f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(arg.encode())}\r\n".encode() + arg.encode() + b"\r\n" for arg in args
    )


def _read_reply(stream: IO[bytes], command: str) -> Reply:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ServiceError(f"redis {command}: connection closed in the middle of a reply")
    line = line[:-2]
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"-":
        raise ServiceError(f"redis {command} failed: {rest.decode(errors='replace')}")
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return stream.read(size + 2)[:size]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(stream, command) for _ in range(count)]
    raise ServiceError(f"redis {command}: unexpected reply {line!r}")


def as_fields(reply: Reply) -> dict[str, str]:
    """A flat ``[key, value, key, value, ...]`` array reply (``SENTINEL master``) as a dict."""
    if not isinstance(reply, list):
        raise ServiceError(f"expected an array of fields, got {reply!r}")
    items = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


def info_fields(text: bytes | None) -> dict[str, str]:
    """``INFO`` output as a dict of its ``key:value`` lines."""
    fields: dict[str, str] = {}
    for line in (text or b"").decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


class ReplicatedRedis(RedisServer):
    """``RedisServer`` with the options a member of a replicated set needs.

    ``replica_of``: the port of the primary to follow (``--replicaof``); None for the primary.
    ``password``: required of clients (``requirepass``) and given to the primary (``masterauth``),
    so that either member can be primary or replica. Full syncs go over the socket at once (no
    diskless delay, no RDB file to wait for).
    """

    def __init__(self, port: int | None = None, *, replica_of: int | None = None, password: str | None = None) -> None:
        super().__init__(port)
        self.replica_of = replica_of
        self.password = password

    def start(self) -> Self:
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "yes"]
        argv += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if self.password is not None:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            argv += ["--replicaof", HOST, str(self.replica_of)]
        self._child.spawn(argv, cwd=self.workdir)
        self._wait_ready(self._pong, START_TIMEOUT)
        return self

    def query(self, *args: str) -> Reply:
        """One command, authenticated, any reply (arrays too)."""
        return resp_command(self.port, *args, password=self.password)

    def command(self, *args: str) -> bytes | None:
        """:meth:`RedisServer.command`, authenticated; an integer reply as its digits."""
        reply = self.query(*args)
        if isinstance(reply, list):
            raise ServiceError(f"redis {args[0]}: an array reply, read it with query()")
        return str(reply).encode() if isinstance(reply, int) else reply

    def replication(self) -> dict[str, str]:
        """``INFO replication`` as a dict (``role``, ``master_link_status``, ``slave0``...)."""
        return info_fields(self.command("INFO", "replication"))


class SentinelProcess(Service):
    """One Debian ``redis-sentinel`` on a free port, monitoring ``service`` at ``primary_port``.

    ``auth_pass``: the password of the monitored servers. ``password``: the sentinel's own,
    required of its clients and given to the other sentinels (which share it).
    """

    name = "redis-sentinel"

    def __init__(
        self,
        service: str,
        primary_port: int,
        *,
        quorum: int = 2,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        auth_pass: str | None = None,
        password: str | None = None,
        port: int | None = None,
        binary: str = "redis-sentinel",
    ) -> None:
        self.binary = require_binary(binary)
        super().__init__(port, "sentinel")
        self.service = service
        self.password = password
        self.config_path = self.workdir / "sentinel.conf"
        secrets = [f"sentinel auth-pass {service} {auth_pass}"] if auth_pass is not None else []
        if password is not None:
            secrets += [f"requirepass {password}", f"sentinel sentinel-pass {password}"]
        self.config_path.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {HOST}",
                    "daemonize no",
                    "protected-mode no",  # bound to loopback only; other sentinels connect to it
                    f"dir {self.workdir}",
                    'logfile ""',
                    "sentinel resolve-hostnames no",
                    f"sentinel monitor {service} {HOST} {primary_port} {quorum}",
                    f"sentinel down-after-milliseconds {service} {down_after_ms}",
                    f"sentinel failover-timeout {service} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {service} 1",
                    *secrets,
                    "",
                ]
            )
        )

    def start(self) -> Self:
        # The config file survives a stop: started again, the sentinel keeps what it had learnt.
        self._child.spawn([self.binary, str(self.config_path)], cwd=self.workdir)
        self._wait_ready(self._pong, START_TIMEOUT)
        return self

    def command(self, *args: str) -> Reply:
        return resp_command(self.port, *args, password=self.password)

    def master(self) -> dict[str, str]:
        """``SENTINEL master <service>``: what this sentinel knows of the primary."""
        return as_fields(self.command("SENTINEL", "MASTER", self.service))

    def master_port(self) -> int | None:
        """The port of the primary this sentinel names now (``SENTINEL get-master-addr-by-name``)."""
        reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], bytes):
            return None
        return int(reply[1])

    def _pong(self) -> bool:
        try:
            return self.command("PING") == b"PONG"
        except (OSError, ServiceError):
            return False


class RedisSentinelSet:
    """A primary, one replica and three sentinels (quorum 2), ready for a failover.

    ``url`` is the ``redis+sentinel://`` URL of SPEC §1 naming the three sentinels, with the
    passwords when there are: ``password`` for the servers (the URL's user-info),
    ``sentinel_password`` for the sentinels (its ``sentinel_password`` option). ``primary`` and
    ``replica`` are the servers as started: after a failover ``replica`` is the primary
    (``current_primary()`` says which one is, as the sentinels see it).
    """

    def __init__(
        self,
        service: str = "petstore",
        *,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.service = service
        self.password = password
        self.sentinel_password = sentinel_password
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinel_count = sentinels
        self.primary = ReplicatedRedis(password=password)
        self.replica = ReplicatedRedis(replica_of=self.primary.port, password=password)
        self.sentinels: list[SentinelProcess] = []

    # ------------------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{sentinel.port}" for sentinel in self.sentinels)
        userinfo = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        query = f"?{urlencode({'sentinel_password': self.sentinel_password})}" if self.sentinel_password else ""
        return f"redis+sentinel://{userinfo}{hosts}/{self.service}{query}"

    @property
    def sentinel_ports(self) -> list[int]:
        return [sentinel.port for sentinel in self.sentinels]

    def current_primary(self) -> ReplicatedRedis:
        """The server every running sentinel names as the primary now; ``ServiceError`` if they disagree."""
        ports = {sentinel.master_port() for sentinel in self.sentinels if sentinel.running}
        for server in (self.primary, self.replica):
            if ports == {server.port}:
                return server
        raise ServiceError(f"the sentinels name {sorted(map(str, ports))} as primary, not one of the set's servers")

    # ------------------------------------------------------------------------------ life cycle

    def start(self) -> Self:
        try:
            self.primary.start()
            self.replica.start()
            # Sentinels learn of replicas from the primary's INFO, asked every 10 s: once the
            # replica is online there, the first INFO of each sentinel (at connect) lists it.
            wait_until(self._replica_in_sync, START_TIMEOUT, "the replica to be in sync with the primary")
            for _ in range(self.sentinel_count):
                sentinel = SentinelProcess(
                    self.service,
                    self.primary.port,
                    quorum=self.quorum,
                    down_after_ms=self.down_after_ms,
                    failover_timeout_ms=self.failover_timeout_ms,
                    auth_pass=self.password,
                    password=self.sentinel_password,
                )
                self.sentinels.append(sentinel)
                sentinel.start()
            wait_until(self._sentinels_agree, START_TIMEOUT, "every sentinel to know the primary, replica and peers")
        except (ServiceError, TimeoutError) as exc:
            report = self.logtails()
            self.close()
            raise ServiceError(f"the sentinel set did not come up: {exc}\n{report}") from None
        return self

    def close(self) -> None:
        """Stop everything (sentinels first) and delete the temporary directories."""
        failures: list[BaseException] = []
        for service in [*self.sentinels, self.replica, self.primary]:
            try:
                service.close()
            except Exception as exc:  # go on stopping the others; report the first afterwards
                failures.append(exc)
        if failures:
            raise failures[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------ faults

    def kill_primary(self) -> ReplicatedRedis:
        """SIGKILL the current primary, as a crash would; returns it (``start()`` brings it back,
        and the sentinels then make it a replica of the new primary)."""
        primary = self.current_primary()
        primary.kill()
        return primary

    def wait_promoted(self, timeout: float = 20.0, port: int | None = None) -> ReplicatedRedis:
        """Wait until every running sentinel names ``port`` (by default the replica's) as the
        primary and that server says it is one; returns it."""
        expected = self.replica.port if port is None else port
        server = self.replica if expected == self.replica.port else self.primary

        def promoted() -> bool:
            for sentinel in self.sentinels:
                if sentinel.running:
                    sentinel._child.check_alive(f"redis-sentinel on port {sentinel.port}")
            try:
                if any(s.master_port() != expected for s in self.sentinels if s.running):
                    return False
                return server.replication().get("role") == "master"
            except (OSError, ServiceError):
                return False

        try:
            wait_until(promoted, timeout, f"the sentinels to promote the server on port {expected}", interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logtails()}") from None
        return server

    # ------------------------------------------------------------------------------ waits

    def _replica_in_sync(self) -> bool:
        self.replica._child.check_alive(f"redis replica on port {self.replica.port}")
        replica, primary = self.replica.replication(), self.primary.replication()
        return replica.get("master_link_status") == "up" and "state=online" in primary.get("slave0", "")

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            sentinel._child.check_alive(f"redis-sentinel on port {sentinel.port}")
            try:
                master = sentinel.master()
            except (OSError, ServiceError):
                return False
            if master.get("port") != str(self.primary.port) or "s_down" in master.get("flags", ""):
                return False
            if int(master.get("num-other-sentinels", 0)) != self.sentinel_count - 1:
                return False
            if int(master.get("num-slaves", 0)) != 1:
                return False
        return True

    def logtails(self, lines: int = 15) -> str:
        """The tail of every log of the set, for a failure message."""
        services: list[tuple[str, Service]] = [("primary", self.primary), ("replica", self.replica)]
        services += [(f"sentinel {n}", sentinel) for n, sentinel in enumerate(self.sentinels)]
        return "\n".join(
            f"--- {label} (port {service.port}, {service.log_path}):\n{service.logtail(lines)}"
            for label, service in services
        )
