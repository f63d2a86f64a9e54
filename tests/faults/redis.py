"""Redis faults, done to a running ``tests.services.RedisServer``.

- :func:`shutdown`: ``SHUTDOWN NOSAVE`` (what ``redis-cli -p P shutdown nosave`` sends), then
  wait for the process to exit: the port is free when it returns. With AOF on (the server made
  with ``appendonly=True``) the file is still flushed, and the next start reads it back.
- :func:`fast_restart`: shutdown, then start again on the same port at once (the gap is the
  time redis-server takes to start: some 20 ms); without persistence Redis comes back empty.
- A slow restart is :func:`shutdown`, whatever the test does meanwhile, then ``server.start()``.
- :func:`frozen`: SIGSTOP for the duration of a ``with`` block, SIGCONT at its end, whatever
  happens in it (a stopped process ignores SIGTERM, so a test must never leave one behind).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator

from tests.services import HOST, RedisServer, ServiceError, wait_until

SHUTDOWN_TIMEOUT = 15.0


def shutdown(server: RedisServer) -> None:
    """Stop Redis with ``SHUTDOWN NOSAVE`` and wait until the process has exited."""
    with socket.create_connection((HOST, server.port), timeout=SHUTDOWN_TIMEOUT) as sock:
        sock.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        reply = sock.recv(512)  # nothing (the connection closes) unless the shutdown was refused
    if reply.startswith(b"-"):
        raise ServiceError(f"redis refused to shut down: {reply.decode(errors='replace').strip()}")
    wait_until(lambda: not server.running, SHUTDOWN_TIMEOUT, f"redis-server on port {server.port} to exit")


def fast_restart(server: RedisServer) -> float:
    """Shut Redis down and start it again on the same port; returns the ``time.monotonic()``
    at which it answered PING again."""
    shutdown(server)
    server.start()
    return time.monotonic()


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """Redis stopped with SIGSTOP inside the block: its sockets stay open and nothing answers."""
    pid = server.pid
    if pid is None:
        raise ServiceError("redis-server is not running: nothing to freeze")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
