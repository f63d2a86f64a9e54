"""Whom a request is counted against: the user, the IP address, or the username a login names.

The IP is the peer's, or, when the peer is one of ``PETSTORE_RATELIMIT_TRUSTED_PROXIES``, the
first hop of ``X-Forwarded-For`` that is not: a client cannot pick its own address by sending
the header, only our own proxies can tell us whom they forward.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import Scope

from petstore.access import Principal

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(scope: Scope, trusted: Sequence[Network]) -> str:
    """The peer, or the first untrusted hop of ``X-Forwarded-For`` when the peer is a trusted proxy."""
    peer = (scope.get("client") or ("unknown", 0))[0]

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in trusted)

    if not trusted or not is_trusted(peer):
        return str(peer)
    forwarded = Headers(scope=scope).getlist("x-forwarded-for")
    hops = [hop.strip() for value in forwarded for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):  # right to left: the rightmost hops were added by our own proxies
        if not is_trusted(hop):
            return hop
    return hops[0] if hops else str(peer)


def ip_key(scope: Scope, trusted: Sequence[Network]) -> str:
    return f"ip:{client_ip(scope, trusted)}"


def client_key(scope: Scope, trusted: Sequence[Network]) -> str:
    """The user when the auth middleware put one in ``scope["user"]``, else the IP."""
    user = scope.get("user")
    if isinstance(user, Principal):
        return f"user:{user.user_id}"
    return ip_key(scope, trusted)


def username_key(username: str) -> str:
    # Usernames go into Redis keys: hashed, so any bytes are safe and none is stored in clear.
    return "name:" + hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()[:32]
