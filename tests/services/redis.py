"""Debian's redis-server on a free port, without persistence unless asked for AOF."""

from __future__ import annotations

import socket
from typing import Self

from .base import HOST, START_TIMEOUT, Service, ServiceError, require_binary


class RedisServer(Service):
    """Debian's `redis-server` on a free port, without persistence: a restart starts empty.

    With `appendonly=True` it keeps an append-only file (fsync on every write) in its
    temporary directory, so a restart, even after a crash, finds every key again.
    """

    name = "redis-server"

    def __init__(self, port: int | None = None, binary: str = "redis-server", *, appendonly: bool = False) -> None:
        self.binary = require_binary(binary)
        self.appendonly = appendonly
        super().__init__(port, "redis")

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> Self:
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", ""]
        argv += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        argv += ["--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "yes"]
        self._child.spawn(argv, cwd=self.workdir)
        self._wait_ready(self._pong, START_TIMEOUT)
        return self

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (to freeze it with SIGSTOP, say)."""
        proc = self._child.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def command(self, *args: str) -> bytes | None:
        """Send one command on a fresh connection, without any client library.

        Returns a status (`b"OK"`), a bulk string, an integer as bytes, or None for a nil reply;
        an error reply raises `ServiceError`. Array replies are not needed by the helpers.
        """
        request = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(arg.encode())}\r\n".encode() + arg.encode() + b"\r\n" for arg in args
        )
        with socket.create_connection((HOST, self.port), timeout=5) as sock:
            sock.sendall(request)
            stream = sock.makefile("rb")
            line = stream.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind in (b"+", b":"):
                return rest
            if kind == b"$":
                size = int(rest)
                return None if size < 0 else stream.read(size + 2)[:size]
            if kind == b"-":
                raise ServiceError(f"redis {args[0]} failed: {rest.decode(errors='replace')}")
            raise ServiceError(f"redis {args[0]}: unexpected reply {line!r}")

    def flushall(self) -> None:
        """Empty every database, so each test starts from nothing."""
        self.command("FLUSHALL")

    def _pong(self) -> bool:
        try:
            return self.command("PING") == b"PONG"
        except (OSError, ServiceError):
            return False  # still loading or not listening yet
