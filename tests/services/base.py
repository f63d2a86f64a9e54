"""What every service helper shares: ports, deadlines, child processes, the lifecycle."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

T = TypeVar("T")


class ServiceError(RuntimeError):
    """A service failed to start, answer or stop; the message carries the tail of its log."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy and return that; `TimeoutError` after `timeout` s.

    Exceptions raised by the predicate propagate at once: a predicate signals "not yet" by
    returning a falsy value, and "never" (the process died) by raising.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)  # a poll interval bounded by the deadline above, not a synchronisation


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET `url` with the standard library; returns (status, body) for any HTTP status."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def require_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"{name} is not installed: run scripts/test, which installs it")
    return found


class Child:
    """One child process at a time, its output appended to a log file.

    Kept apart from the service objects so that `weakref.finalize` can reap a child whose
    service was never stopped without holding a reference to the service itself.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
        if self.running:
            raise ServiceError(f"{argv[0]} is already running")
        if os.environ.get("PETSTORE_FAST") == "1":
            # The fast lane is the tests that stay in the pytest process (tests/conftest.py picks
            # them by mark): one that starts a real program here lacks its mark, and slows it down.
            raise ServiceError(f"{argv[0]} started in the fast lane: mark the test `process` (or its service's mark)")
        with self.log_path.open("ab") as log:
            # A session of its own: Ctrl-C in the terminal reaches pytest, which stops services
            # in order, and `kill()` can take down a server's worker processes with it.
            self.proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )

    def check_alive(self, what: str) -> None:
        """Raise `ServiceError` with the log tail if the child has exited."""
        if self.proc is None:
            raise ServiceError(f"{what} was not started")
        code = self.proc.poll()
        if code is not None:
            raise ServiceError(f"{what} exited with status {code}; last log lines:\n{tail(self.log_path)}")

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM and wait; SIGKILL the whole group if it does not exit in time."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServiceError(
                    f"{proc.args!r} ignored SIGTERM for {timeout:g}s and was killed; "
                    f"last log lines:\n{tail(self.log_path)}"
                ) from None
        self._kill_group(proc.pid)
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the child and every process of its session (e.g. uvicorn's workers), then reap it."""
        proc = self.proc
        if proc is None:
            return None
        self._kill_group(proc.pid)
        if proc.poll() is None:
            proc.kill()
        return proc.wait(STOP_TIMEOUT)

    @staticmethod
    def _kill_group(pgid: int) -> None:
        # Leftovers of the session (workers orphaned by a crash) must not outlive the test run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def reap(child: Child, workdir: Path | None) -> None:
    """Finalizer: a service dropped or left running at exit never outlives the test run."""
    child.kill()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


class Service(ABC):
    """Shared lifecycle: a temp dir, `start()`/`stop()`, and `with` support that also removes the dir."""

    name = "service"

    def __init__(self, port: int | None, prefix: str) -> None:
        self.port = port if port is not None else free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"petstore-test-{prefix}-"))
        self.log_path = self.workdir / f"{prefix}.log"
        self._child = Child(self.log_path)
        self._finalizer = weakref.finalize(self, reap, self._child, self.workdir)

    @property
    def running(self) -> bool:
        return self._child.running

    def logtail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    @abstractmethod
    def start(self) -> Self:
        """Start the program and return once it answers; `ServiceError` (with the log tail) if it cannot."""

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), waiting for the process to exit; the port is then free again."""
        self._child.terminate()

    def kill(self) -> None:
        """SIGKILL, as a crash would; `start()` brings it back on the same port."""
        self._child.kill()

    def close(self) -> None:
        """Stop and delete the temporary directory."""
        try:
            self.stop()
        finally:
            self._finalizer()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        def check() -> bool:
            self._child.check_alive(f"{self.name} on port {self.port}")
            return ready()

        try:
            wait_until(check, timeout, f"{self.name} on port {self.port} to be ready")
        except TimeoutError as exc:
            self._child.kill()
            raise ServiceError(f"{exc}; last log lines:\n{self.logtail()}") from None
