"""Passwords: the rule a new one must meet, and Argon2id hashes computed off the event loop
(hashing is deliberately slow).

The rule (:func:`password_problem`) is the one NIST SP 800-63B asks of a verifier: a minimum
length, and not a password known to be common. It holds wherever a password is set: sign-up
(``POST /user``, ``createWithList``), a changed password (``PUT /user/{username}``) and
``petstore users create``. The list is package data, ``petstore/data/common-passwords.txt``
(where it comes from is said at its top).
"""

from __future__ import annotations

import asyncio
import functools
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 8
COMMON_PASSWORDS = "common-passwords.txt"

_hasher = PasswordHasher()  # stateless and thread-safe: parameters only, no mutable state

# Verifying against this costs what verifying a real hash costs, so an unknown username takes as
# long to refuse as a wrong password.
_DUMMY_HASH = _hasher.hash("petstore-timing-equaliser")


@functools.cache
def common_passwords() -> frozenset[str]:
    """The common passwords, lowercased (read once, on first use)."""
    text = resources.files("petstore").joinpath("data", COMMON_PASSWORDS).read_text(encoding="utf-8")
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def password_problem(password: str) -> str | None:
    """Why ``password`` may not be set, in words for its user; None when it may."""
    if len(password) < MIN_LENGTH:
        return f"a password needs at least {MIN_LENGTH} characters"
    if password.lower() in common_passwords():
        return "this password is one of the most common ones: choose another"
    return None


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(verify)
