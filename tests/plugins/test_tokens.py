"""plugins.tokens: the key set behind plugins.auth (the only code that knows python-jose)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from plugins.tokens import MAX_TIME, TIME_CLAIMS, KeySet, TokenError

# RFC 7638 §3.1: this key's thumbprint is NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3o"
    "knjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHz"
    "u6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU"
    "8awapJzKnqDKgw"
)
RFC7638_KID = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def b64int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def pem(key: Any) -> str:
    if hasattr(key, "private_bytes"):
        return str(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode()
        )
    return str(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def new_private_key(algorithm: str) -> Any:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": "i", "aud": "a", "sub": "s", "exp": now + 60, "nbf": now, "iat": now, "jti": "j"}
    return {k: v for k, v in (base | changes).items() if v is not None}


def decode(keys: KeySet, token: str) -> dict[str, Any]:
    return keys.decode(token, audience="a", issuer="i", leeway=0)


def reason(keys: KeySet, token: str) -> str:
    with pytest.raises(TokenError) as refusal:
        decode(keys, token)
    return refusal.value.reason


def header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def test_kid_is_the_rfc7638_thumbprint() -> None:
    public = rsa.RSAPublicNumbers(b64int("AQAB"), b64int(RFC7638_N)).public_key()
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = KeySet.asymmetric("RS256", pem(signing), previous_public=[(None, pem(public))])
    assert RFC7638_KID in keys.verifying
    published = next(k for k in keys.jwks()["keys"] if k["kid"] == RFC7638_KID)
    assert published == {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "kid": RFC7638_KID, "alg": "RS256", "use": "sig"}


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_asymmetric_round_trip_and_jwks_without_private_parts(algorithm: str) -> None:
    private = new_private_key(algorithm)
    keys = KeySet.asymmetric(algorithm, pem(private), kid="k1")
    token = keys.encode(claims())
    assert header(token) == {"alg": algorithm, "kid": "k1", "typ": "JWT"}
    assert decode(keys, token)["sub"] == "s"
    assert [k["kid"] for k in keys.jwks()["keys"]] == ["k1"]
    assert all(not {"d", "p", "q", "dp", "dq", "qi"} & set(k) for k in keys.jwks()["keys"])
    # A verifier holding only the public key (what the JWKS gives away) accepts it too.
    other_signing = new_private_key(algorithm)
    other = KeySet.asymmetric(algorithm, pem(other_signing), previous_public=[("k1", pem(private.public_key()))])
    assert decode(other, token)["sub"] == "s"


def test_hmac_refusals_name_their_reason() -> None:
    keys = KeySet.hmac("s" * 48)
    now = int(time.time())
    assert reason(keys, "garbage") == "malformed"
    assert reason(keys, keys.encode(claims(exp=now - 5))) == "expired"
    assert reason(keys, keys.encode(claims(nbf=now + 60))) == "not_yet_valid"
    assert reason(keys, keys.encode(claims(aud="b"))) == "bad_audience"
    assert reason(keys, keys.encode(claims(iss="x"))) == "bad_issuer"
    assert reason(keys, keys.encode(claims(jti=None))) == "bad_claims"
    assert reason(KeySet.hmac("t" * 48), keys.encode(claims())) == "unknown_kid"


def test_hmac_rotation_and_signature_check() -> None:
    old, new = KeySet.hmac("o" * 48), KeySet.hmac("n" * 48, previous=["o" * 48])
    token = old.encode(claims())
    assert decode(new, token)["sub"] == "s"
    assert header(new.encode(claims()))["kid"] == new.signing_kid != old.signing_kid
    assert new.jwks() == {"keys": []}  # secrets are never published
    head, payload, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    assert reason(new, f"{head}.{payload}.{flipped}") == "bad_signature"


def test_leeway_applies_to_exp_and_nbf() -> None:
    keys = KeySet.hmac("s" * 48)
    now = int(time.time())
    token = keys.encode(claims(exp=now - 10, nbf=now + 10))
    assert keys.decode(token, audience="a", issuer="i", leeway=30)["sub"] == "s"
    assert reason(keys, token) in ("expired", "not_yet_valid")


#: What a signed token may carry in a time claim instead of a whole number of seconds in range.
BAD_TIMES = (2**70, MAX_TIME + 1, -1, 1.5, float("inf"), "1700000000", True, False, None, [1], {"t": 1})


@pytest.mark.parametrize("claim", TIME_CLAIMS)
def test_time_claims_out_of_range_or_of_another_type_are_bad_claims(claim: str) -> None:
    """Never a TypeError or OverflowError from python-jose, and never a time read from a string or a bool."""
    keys = KeySet.hmac("s" * 48)
    for value in BAD_TIMES:
        token = keys.encode(claims() | {claim: value})
        assert reason(keys, token) == "bad_claims", (claim, value)
    in_range = {"exp": MAX_TIME, "nbf": 0, "iat": 0}[claim]
    assert decode(keys, keys.encode(claims(**{claim: in_range})))[claim] == in_range


def test_bad_configurations_are_value_errors() -> None:
    with pytest.raises(ValueError):
        KeySet.hmac("")
    with pytest.raises(ValueError):
        KeySet.asymmetric("HS256", "irrelevant")
    with pytest.raises(ValueError):
        KeySet.asymmetric("RS256", "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    public = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    with pytest.raises(ValueError, match="private key"):
        KeySet.asymmetric("RS256", public)
