"""``/docs``: Swagger UI on ``/api/v3/openapi.json``, every file served from this process.

The assets come from the ``swagger_ui_bundle`` package (Swagger UI 5, which renders OpenAPI 3.1).
Only the files the page loads are served: the bundle's own ``index.html`` and initializer point
at a public demo server, and nothing here may make a browser reach a host other than this one.
"""

from __future__ import annotations

from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from petstore.api.openapi import DOCUMENT_PATH
from petstore.conventions import DOCS_CSP

ASSETS_PATH = "/docs/assets"
#: The page (``/docs``) names its files relative to itself, so that behind a proxy's path prefix
#: (``petstore serve --root-path``) the browser asks for them under that prefix too.
RELATIVE_ASSETS = ASSETS_PATH.lstrip("/")
#: What the page loads (and the source maps a browser's developer tools ask for).
ASSETS = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui.css.map",
        "swagger-ui-bundle.js",
        "swagger-ui-bundle.js.map",
        "favicon-16x16.png",
        "favicon-32x32.png",
    }
)

PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Petstore API</title>
  <link rel="stylesheet" href="{RELATIVE_ASSETS}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{RELATIVE_ASSETS}/favicon-32x32.png" sizes="32x32">
  <link rel="icon" type="image/png" href="{RELATIVE_ASSETS}/favicon-16x16.png" sizes="16x16">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{RELATIVE_ASSETS}/swagger-ui-bundle.js"></script>
  <script src="docs/init.js"></script>
</body>
</html>
"""

# A script file rather than an inline script, so that a strict Content-Security-Policy can allow it.
INIT_SCRIPT = f"""window.addEventListener("load", function () {{
  window.ui = SwaggerUIBundle({{
    url: "{DOCUMENT_PATH.lstrip("/")}",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    // The default validator badge sends the document to a public service.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  }});
}});
"""


class SwaggerAssets(StaticFiles):
    """The bundle's directory, limited to :data:`ASSETS`."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path not in ASSETS:
            raise HTTPException(status_code=404, detail="not found")
        return await super().get_response(path, scope)


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": DOCS_CSP})


async def init_script(request: Request) -> Response:
    return Response(INIT_SCRIPT, media_type="text/javascript")


def routes() -> list[BaseRoute]:
    return [
        Route("/docs", page, methods=["GET"], name="docs"),
        Route("/docs/init.js", init_script, methods=["GET"], name="docs_init"),
        Mount(ASSETS_PATH, SwaggerAssets(directory=Path(str(swagger_ui_path))), name="docs_assets"),
    ]
