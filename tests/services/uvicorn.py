"""The petstore server (or any ASGI app) as a real uvicorn subprocess."""

from __future__ import annotations

import http.client
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from .base import HOST, START_TIMEOUT, Service, http_get

# The protocols `petstore serve` runs: uvicorn's sans-I/O WebSocket one plus the hub's direct
# writes, and its httptools one; both take part in the SIGTERM drain (petstore.server.shutdown).
DEFAULT_APP_COMMAND = (
    sys.executable, "-m", "uvicorn", "petstore.app:create_app", "--factory", "--host", "{host}", "--port", "{port}",
    "--ws", "petstore.server.uvicorn_ws:WebSocketProtocol", "--http", "petstore.server.uvicorn_http:HttpProtocol",
)  # fmt: skip


class UvicornServer(Service):
    """The petstore server (or any ASGI app) as a real subprocess on a free port.

    `command` is an argv whose items may contain `{host}` and `{port}`; by default uvicorn runs
    `petstore.app:create_app`. The process sees the test runner's environment minus any
    `PETSTORE_*` variables, plus `env`, so a developer's shell settings never leak into a test.
    Its stdout and stderr go to `log_path`.
    """

    name = "uvicorn"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = DEFAULT_APP_COMMAND,
        port: int | None = None,
        health_path: str = "/healthz",
        cwd: Path | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__(port, "uvicorn")
        self.env = dict(env or {})
        self.command = list(command)
        self.health_path = health_path
        self.cwd = cwd
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        proc = self._child.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> Self:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PETSTORE_")}
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")  # so the log tail in errors is complete
        argv = [part.format(host=HOST, port=self.port) for part in self.command]
        self._child.spawn(argv, env=env, cwd=self.cwd)
        self._wait_ready(self._healthy, self.start_timeout)
        return self

    def restart(self) -> Self:
        """Graceful stop, then start again on the same port with the same environment."""
        self.stop()
        return self.start()

    def _healthy(self) -> bool:
        try:
            status, _ = http_get(f"{self.url}{self.health_path}", timeout=2)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200
