"""Starlette's ``CORSMiddleware``, with its refusals in the JSON error shape of SPEC §2.

A preflight Starlette refuses gets a plain-text ``Disallowed CORS origin`` (400). Here it gets
``{"code", "type", "message"}`` like every other error: 403 ``forbidden`` when the origin is not in
``PETSTORE_ALLOWED_ORIGINS`` (as a WebSocket from that origin gets), 400 ``bad_request`` when only
the method or a header is not allowed. Everything else is Starlette's.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from petstore.errors import error_response

#: The body's own headers, which the JSON answer sets again.
BODY_HEADERS = frozenset({"content-length", "content-type"})


class JsonCORSMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {name: value for name, value in response.headers.items() if name not in BODY_HEADERS}
        reason = bytes(response.body).decode("utf-8", "replace")
        if not self.is_allowed_origin(origin=request_headers["origin"]):
            return error_response(403, "forbidden", f"{reason}: this origin may not call this API", headers)
        return error_response(400, "bad_request", reason, headers)
