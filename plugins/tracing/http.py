"""HTTP server spans: a pure ASGI middleware, one span per request, named by its route template.

The span is named ``{method} {route}`` (``POST /api/v3/pet``, ``GET /api/v3/pet/{petId}``),
never with the raw path: ids would make every pet its own operation. A request no route matches
is named by its method alone, as OpenTelemetry's HTTP conventions say. The route is found after
the app answered, by the core's matcher (:mod:`petstore.routing`, the access log's), so a 401 or
429 that another plugin's middleware answered is named by its route too.

What goes into attributes is chosen, not copied: method, scheme, path, route, protocol version
and status. Never the query string, and never a header: a token that a client put in a URL
(refused, but sent all the same) or in ``Authorization`` stays out of every trace. An incoming
W3C ``traceparent`` is honoured, so a caller's trace goes on through the server.

WebSocket and lifespan scopes pass through untouched: a WebSocket lives for hours, and what
matters of it, each event's delivery, is traced by the hub (one span per event and instance).
"""

from __future__ import annotations

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from petstore.routing import UNMATCHED, RouteTemplates

#: The methods a span is named by; anything else a client sends is ``_OTHER`` (OpenTelemetry's rule).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


class TracingMiddleware:
    """Pure ASGI: one SERVER span around each HTTP request, current while the app answers it."""

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        self.app = app
        self.tracer = tracer
        self.route_of = RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in METHODS else "_OTHER"
        # The router rewrites path and root_path in place when it enters a Mount (see plugins.metrics).
        incoming = dict(scope)
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        attributes = {
            "http.request.method": method,
            "url.scheme": scope.get("scheme", "http"),
            "url.path": scope["path"],
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        with self.tracer.start_as_current_span(
            method, context=propagate.extract(headers), kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            status = 500  # unless a response starts: an exception escaping the app is a 500

            async def send_with_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_with_status)
            finally:
                route = self.route_of(incoming, scope.get("route"))
                if route != UNMATCHED:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
