"""The server's log lines: text for a terminal, or one JSON object per line (``PETSTORE_LOG_FORMAT``).

Every line written while a request is served names that request (:data:`REQUEST_ID`, set by
:mod:`petstore.conventions` from ``X-Request-ID``), whoever logged it: the core, a plugin, uvicorn.
:func:`config` is the ``logging.config.dictConfig`` that ``petstore serve`` hands uvicorn, so
uvicorn's own loggers and the app's share one handler and one format.

A JSON line has ``ts`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``message`` and
``request_id`` (null outside a request); the access log (``petstore.access``) adds ``method``,
``route`` (the template, never the raw path), ``path`` (without the query string, which can carry
a login's password), ``status``, ``duration_ms``, ``user`` and ``client``. Nothing here logs a
header or a body, so no token or password reaches a line.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any, Literal

LogFormat = Literal["text", "json"]

#: The id of the request being served (None outside one): ``contextvars`` carry it into every
#: task the request starts, and ``asyncio`` keeps it apart from the other requests'.
REQUEST_ID: ContextVar[str | None] = ContextVar("petstore_request_id", default=None)

#: The attributes an access-log record carries (``logger.info(..., extra=...)``), in line order.
ACCESS_FIELDS = ("method", "route", "path", "status", "duration_ms", "user", "client")

#: What Python's LogRecord has of its own: anything else on a record came through ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


class RequestContext(logging.Filter):
    """Puts the current request's id on every record that passes (as ``request_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in ("color_message",):
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``LEVEL:    logger: message [request id]``, in the manner of uvicorn's own lines."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if not record.name.startswith("uvicorn"):
            message = f"{record.name}: {message}"
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            message = f"{message} [request {request_id}]"
        line = f"{record.levelname + ':':<9} {message}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def config(log_format: LogFormat, level: str = "info") -> dict[str, Any]:
    """The ``dictConfig`` of ``petstore serve``: one stderr handler for every logger, uvicorn's too.

    uvicorn's access log is off (``petstore serve`` passes ``access_log=False``): the app writes
    its own, with the route template, the user and the duration (:mod:`petstore.conventions`).
    """
    formatter = {"()": JsonFormatter} if log_format == "json" else {"()": TextFormatter}
    handler = {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "formatter": "petstore",
        "filters": ["request"],
    }
    uvicorn = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestContext}},
        "formatters": {"petstore": formatter},
        "handlers": {"default": handler},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {"uvicorn": uvicorn, "uvicorn.error": {"level": level.upper()}, "uvicorn.access": uvicorn},
    }
