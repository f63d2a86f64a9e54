"""Debian's haproxy running the repository's deploy/haproxy.cfg in front of real instances."""

from __future__ import annotations

import csv
import http.client
import io
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from .base import HOST, START_TIMEOUT, Service, ServiceError, free_port, http_get, require_binary, wait_until

#: The file operators deploy, and docker-compose.yml mounts: the tests run exactly this one.
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
BACKEND = "instances"


class HaproxyServer(Service):
    """`haproxy -db -f deploy/haproxy.cfg` with the instances' ports and its own in the environment.

    `backends` are the instances' ports on 127.0.0.1, in the order of the config's server lines
    (`petstore-1`, `petstore-2`, ...). `states()` reads each server's state from the stats page,
    as an operator would, and `wait_states()` waits for haproxy's view to become the expected one.
    """

    name = "haproxy"

    def __init__(
        self,
        backends: Sequence[int],
        port: int | None = None,
        config: Path = CONFIG,
        binary: str = "haproxy",
    ) -> None:
        self.binary = require_binary(binary)
        super().__init__(port, "haproxy")
        self.backends = list(backends)
        self.config = config
        self.stats_port = free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}"

    @property
    def servers(self) -> list[str]:
        return [f"petstore-{n}" for n in range(1, len(self.backends) + 1)]

    def environment(self) -> dict[str, str]:
        """What the config reads (see its header), pointing at this test's ports."""
        env = {f"PETSTORE_BACKEND_{n}": f"{HOST}:{port}" for n, port in enumerate(self.backends, start=1)}
        env["PETSTORE_LISTEN"] = f"{HOST}:{self.port}"
        env["PETSTORE_STATS_LISTEN"] = f"{HOST}:{self.stats_port}"
        return env

    def check_config(self) -> str:
        """`haproxy -c`: its output, warnings included; `ServiceError` with its message if the file is invalid."""
        result = subprocess.run(
            [self.binary, "-c", "-f", str(self.config)],
            env={**os.environ, **self.environment()},
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            raise ServiceError(f"haproxy -c -f {self.config} failed:\n{result.stdout}{result.stderr}")
        return result.stdout + result.stderr

    def start(self) -> Self:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PETSTORE_")}
        env.update(self.environment())
        self._child.spawn([self.binary, "-db", "-f", str(self.config)], env=env, cwd=self.workdir)
        self._wait_ready(self._answers, START_TIMEOUT)
        return self

    def states(self) -> dict[str, str]:
        """Each instance's state as haproxy sees it: `UP`, `DOWN`, `UP 1/2` (going down), `NOLB`..."""
        self._child.check_alive(f"haproxy on port {self.port}")
        status, body = http_get(f"http://{HOST}:{self.stats_port}/stats;csv", timeout=5)
        if status != 200:
            raise ServiceError(f"haproxy stats answered {status}")
        rows = csv.DictReader(io.StringIO(body.decode().lstrip("# ")))
        return {
            row["svname"]: row["status"] for row in rows if row["pxname"] == BACKEND and row["svname"] in self.servers
        }

    def wait_states(self, expected: Mapping[str, str], timeout: float = 20.0) -> None:
        """Wait until haproxy reports `expected` (server name -> state); `TimeoutError` naming what it saw."""
        seen: dict[str, str] = {}

        def reached() -> bool:
            nonlocal seen
            seen = self.states()
            return all(seen.get(name) == state for name, state in expected.items())

        try:
            wait_until(reached, timeout, f"haproxy to see {dict(expected)}", interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; it sees {seen}; last log lines:\n{self.logtail()}") from None

    def _answers(self) -> bool:
        try:
            return bool(self.states())
        except (OSError, http.client.HTTPException):
            return False
