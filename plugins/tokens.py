"""Signed tokens (JWS/JWT), the only module that knows python-jose: swap the library here alone.

A :class:`KeySet` holds one signing key and every key still accepted for verification (the
signing key, plus old keys during a rotation), each with a ``kid``. One algorithm is pinned per
key set (``HS256``, ``RS256`` or ``ES256``) and is the only one :meth:`KeySet.decode` accepts:
a token whose header names another algorithm (``none``, or ``HS256`` signed with the RSA public
key as an HMAC secret) is refused before any signature check.

Refusals raise :class:`TokenError` with a short ``reason`` label, used for metrics and never
shown with the token itself.

The time claims (``exp``, ``nbf``, ``iat``) are checked here rather than by python-jose, which
takes ``true``, ``"12"`` or ``1.5`` for a time and fails on ``null`` or ``Infinity`` with an
error of its own: each must be a whole number of seconds between 0 and :data:`MAX_TIME`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jose import jwk, jwt
from jose.exceptions import JOSEError, JWTClaimsError

from petstore.errors import PetstoreError

SYMMETRIC = ("HS256",)
ASYMMETRIC = ("RS256", "ES256")
ALGORITHMS = SYMMETRIC + ASYMMETRIC

#: Claims every token must carry; a token missing one is refused.
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "nbf", "iat", "jti")
#: The claims that are times (RFC 7519 NumericDate), checked by :func:`_check_times`.
TIME_CLAIMS = ("exp", "nbf", "iat")
#: 9999-12-31T23:59:59Z, the last second a ``datetime`` holds: a time claim past it is no time at all.
MAX_TIME = 253_402_300_799


class TokenError(PetstoreError):
    """A token was refused; ``reason`` is a short label such as ``expired`` or ``unknown_kid``."""

    def __init__(self, reason: str, message: str = "invalid token") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _thumbprint(public_jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint: a ``kid`` that any party can recompute from the public key."""
    members = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}[public_jwk["kty"]]
    canonical = json.dumps({name: public_jwk[name] for name in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


@dataclass(frozen=True)
class VerifyingKey:
    kid: str
    key: Any  # what python-jose accepts: an HMAC secret, or a public key object
    public_jwk: Mapping[str, Any] | None  # None for HMAC secrets, which are never published


def _asymmetric_key(pem: str, algorithm: str, kid: str | None) -> tuple[Any, bool, VerifyingKey]:
    """A PEM private or public key -> (the key as given, whether it is private, its public verifying key)."""
    try:
        key = jwk.construct(pem, algorithm)
    except JOSEError as exc:
        raise ValueError(f"not a usable {algorithm} key: {exc}") from None
    private = "d" in key.to_dict()
    public = key.public_key() if private else key
    public_dict = {name: value for name, value in public.to_dict().items() if name != "alg"}
    if "d" in public_dict:  # a library that returned private members would publish the key
        raise ValueError("refusing to publish a private key member")
    kid = kid or _thumbprint(public_dict)
    return key, private, VerifyingKey(kid, public, {**public_dict, "kid": kid, "alg": algorithm, "use": "sig"})


def _hmac_kid(secret: str) -> str:
    # A hash of the secret, cut short: identifies it across instances, reveals nothing usable.
    return _b64url(hashlib.sha256(b"petstore-kid:" + secret.encode()).digest())[:16]


class KeySet:
    """One pinned algorithm, one signing key, and the keys accepted for verification (by ``kid``)."""

    def __init__(self, algorithm: str, signing_kid: str, signing_key: Any, verifying: Iterable[VerifyingKey]) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unsupported JWT algorithm {algorithm!r}; use one of {', '.join(ALGORITHMS)}")
        self.algorithm = algorithm
        self.signing_kid = signing_kid
        self._signing_key = signing_key
        self.verifying = {key.kid: key for key in verifying}
        if signing_kid not in self.verifying:
            raise ValueError("the signing key must also be a verifying key")

    @classmethod
    def hmac(cls, secret: str, previous: Sequence[str] = ()) -> KeySet:
        """HS256 with ``secret``; ``previous`` secrets are still accepted (rotation)."""
        if not secret:
            raise ValueError("an HMAC key set needs a secret")
        keys = [VerifyingKey(_hmac_kid(s), s, None) for s in (secret, *previous) if s]
        return cls("HS256", keys[0].kid, secret, keys)

    @classmethod
    def asymmetric(
        cls,
        algorithm: str,
        private_pem: str,
        kid: str | None = None,
        previous_public: Sequence[tuple[str | None, str]] = (),
    ) -> KeySet:
        """RS256/ES256 signing with ``private_pem``; ``previous_public`` = [(kid or None, public PEM)]."""
        if algorithm not in ASYMMETRIC:
            raise ValueError(f"{algorithm} is not an asymmetric algorithm ({', '.join(ASYMMETRIC)})")
        signing_key, private, signing_public = _asymmetric_key(private_pem, algorithm, kid)
        if not private:
            raise ValueError("the signing key file holds a public key; a private key is needed")
        keys = [signing_public] + [_asymmetric_key(pem, algorithm, old_kid)[2] for old_kid, pem in previous_public]
        return cls(algorithm, signing_public.kid, signing_key, keys)

    @property
    def is_asymmetric(self) -> bool:
        return self.algorithm in ASYMMETRIC

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JWK Set (RFC 7517); empty for HMAC, whose keys are secret."""
        return {"keys": [dict(key.public_jwk) for key in self.verifying.values() if key.public_jwk is not None]}

    def encode(self, claims: Mapping[str, Any]) -> str:
        return str(
            jwt.encode(dict(claims), self._signing_key, algorithm=self.algorithm, headers={"kid": self.signing_kid})
        )

    def decode(self, token: str, *, audience: str, issuer: str, leeway: int) -> dict[str, Any]:
        """The verified claims of ``token``, or :class:`TokenError`."""
        try:
            header = jwt.get_unverified_header(token)
        except JOSEError:
            raise TokenError("malformed") from None
        if header.get("alg") != self.algorithm:
            raise TokenError("bad_algorithm")
        key = self.verifying.get(str(header.get("kid")))
        if key is None:
            raise TokenError("unknown_kid")
        options = {f"require_{claim}": True for claim in REQUIRED_CLAIMS if claim not in TIME_CLAIMS}
        options |= {f"verify_{claim}": False for claim in TIME_CLAIMS}
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=[self.algorithm], audience=audience, issuer=issuer, options=options
            )
        except JWTClaimsError as exc:
            raise TokenError(_claims_reason(str(exc))) from None
        except JOSEError as exc:
            # The signature is checked before the claims, so a missing claim here was signed by us.
            raise TokenError("bad_claims" if "missing required key" in str(exc) else "bad_signature") from None
        _check_times(claims, leeway)
        return claims


def _check_times(claims: Mapping[str, Any], leeway: int) -> None:
    """Every time claim present and a whole number in range; not expired nor early beyond ``leeway``."""
    for name in TIME_CLAIMS:
        value = claims.get(name)
        if type(value) is not int or not 0 <= value <= MAX_TIME:  # type(): True is an int too
            raise TokenError("bad_claims")
    now = int(time.time())
    if claims["exp"] < now - leeway:
        raise TokenError("expired", "token expired")
    if claims["nbf"] > now + leeway:
        raise TokenError("not_yet_valid")


def _claims_reason(message: str) -> str:
    text = message.lower()
    for needle, reason in (("audience", "bad_audience"), ("issuer", "bad_issuer")):
        if needle in text:
            return reason
    return "bad_claims"
