"""Which route of the app a request is for, as its template (``/api/v3/pet/{petId}``).

Logs and metrics name requests by template, never by raw path: a path carries ids (one log
field or metric series each) and whatever a scanner sends. A path no route matches is
``"unmatched"``.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

UNMATCHED = "unmatched"
OTHER = "other"


def route_path(scope: Scope) -> str:
    """The path the app's routes see: the request's, less ``root_path`` (``petstore serve
    --root-path``; uvicorn puts the prefix in ``path`` too, as ASGI says). What middleware must
    compare with a route's path; ``scope["path"]`` alone misses every route behind a prefix."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class RouteTemplates:
    """The template of the app route a request matches (one instance per middleware)."""

    def __init__(self) -> None:
        self._templates: dict[int, str] = {}
        self._routes: Sequence[BaseRoute] = ()

    def _learn(self, app: Starlette) -> None:
        self._routes = tuple(app.routes)
        self._templates = {id(route): self._template(route) for route in self._routes}

    @staticmethod
    def _template(route: BaseRoute) -> str:
        if isinstance(route, Mount):
            return f"{route.path}/{{path}}"
        if isinstance(route, Route):
            return route.path
        return str(getattr(route, "path", OTHER))

    def __call__(self, request: Scope, matched: object) -> str:
        """``request``: the scope as it came in; ``matched``: the route the router left in it, if any."""
        app = request.get("app")
        if isinstance(app, Starlette) and not self._routes:
            self._learn(app)
        # Fast path: the router already matched this request and said so in the scope.
        # Only a top-level route counts: a nested router leaves its own, relative one.
        if matched is not None and (template := self._templates.get(id(matched))) is not None:
            return template
        # The router never ran (a middleware answered first, e.g. 401 or 429): match here.
        partial: str | None = None
        for route in self._routes:
            match, _ = route.matches(request)
            if match is Match.FULL:
                return self._templates[id(route)]
            if match is Match.PARTIAL and partial is None:
                partial = self._templates[id(route)]  # the path exists, not for this method (405)
        return partial or UNMATCHED
