"""ETags on the reads a client polls (a pet, an order, a user, the inventory), with ``If-None-Match``.

The tag is a hash of the JSON body itself, so it changes exactly when the JSON would: not on a
write that leaves the body as it was, always on one that does not. It is weak (``W/"…"``): the
same JSON is the same resource state whatever content coding (gzip) carries it, and
``If-None-Match`` compares tags weakly anyway (RFC 9110 §13.1.2).
"""

from __future__ import annotations

import base64
import hashlib

from starlette.requests import Request
from starlette.responses import Response

#: What a 304 repeats of the 200 it stands for (RFC 9110 §15.4.5).
_KEPT = ("cache-control", "vary")
#: Private answers (an order, a user) must not be kept by a shared cache; every answer is
#: revalidated, as the store changes live.
PUBLIC = "no-cache"
PRIVATE = "private, no-cache"


def etag_of(body: bytes) -> str:
    digest = hashlib.blake2b(body, digest_size=12).digest()
    return 'W/"' + base64.urlsafe_b64encode(digest).decode("ascii") + '"'


def matches(if_none_match: str, etag: str) -> bool:
    """Whether an ``If-None-Match`` value holds ``etag``, weakly compared (``*`` holds any)."""
    opaque = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == opaque:
            return True
    return False


def conditional(request: Request, response: Response, *, private: bool = False) -> Response:
    """``response`` (a rendered 200) with its ETag, or a bodiless 304 when the client has it already."""
    etag = etag_of(bytes(response.body))
    response.headers["ETag"] = etag
    response.headers["Cache-Control"] = PRIVATE if private else PUBLIC
    if private:
        response.headers["Vary"] = "Authorization"
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is None or not matches(if_none_match, etag):
        return response
    headers = {"ETag": etag} | {name: response.headers[name] for name in _KEPT if name in response.headers}
    return Response(status_code=304, headers=headers)
