"""Debian's Prometheus with a given configuration and the lifecycle API."""

from __future__ import annotations

import http.client
import json
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any, Self

from .base import HOST, START_TIMEOUT, Service, ServiceError, http_get, require_binary


class PrometheusServer(Service):
    """Debian's `prometheus` with the given configuration, temp storage and the lifecycle API on.

    `files` are written beside the configuration (alert rule files it names, for instance).
    """

    name = "prometheus"

    def __init__(
        self,
        config: str,
        files: Mapping[str, str] | None = None,
        port: int | None = None,
        binary: str = "prometheus",
    ) -> None:
        self.binary = require_binary(binary)
        super().__init__(port, "prometheus")
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(config)
        for name, text in (files or {}).items():
            (self.workdir / name).write_text(text)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> Self:
        argv = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--web.enable-lifecycle",
        ]
        self._child.spawn(argv, cwd=self.workdir)
        self._wait_ready(self._ready, START_TIMEOUT)
        return self

    def _ready(self) -> bool:
        try:
            status, _ = http_get(f"{self.url}/-/ready", timeout=2)
        except (OSError, http.client.HTTPException):
            return False
        return status == 200

    def api(self, path: str, **params: str) -> Any:
        """GET an `/api/v1/...` endpoint and return its `data`; `ServiceError` unless status is success."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http_get(url)
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise ServiceError(f"prometheus {path} answered {status}: {body.decode(errors='replace')}")
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; returns the result vector (`[{"metric": {...}, "value": [ts, "v"]}, ...]`)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def reload(self) -> None:
        """Re-read the configuration file (after rewriting `config_path`)."""
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise ServiceError(f"prometheus reload answered {response.status}")
