"""Revoked tokens and refresh-token families: kept in the database, with each instance's copy in memory.

The database is the source of truth that every instance shares (tables of :mod:`plugins.auth.schema`).
A request's revocation check reads this instance's :class:`RevokedKeys`, a dictionary: no I/O, so no
request depends on Redis, or waits on anything but the user lookup it makes anyway. The copy is
loaded at start-up and kept fresh by :class:`plugins.auth.feed.RevocationFeed` (Redis pub/sub, and a
database poll that holds during a Redis outage). Until the first load succeeds (the database was
down at start-up, or its tables are made after), each check asks the database itself.

A *family* starts at a login and follows one chain of refresh tokens. Only its newest refresh
token may be used; presenting an older one means it was stolen or replayed, so the whole family
is revoked. Spending a refresh token is one conditional ``UPDATE ... WHERE current_jti = :presented``
whose row count says who won, so two instances racing with one token cannot both succeed, on
PostgreSQL and SQLite alike. Rows live as long as the tokens they describe could, then are pruned.

Every revocation an instance learns of, by any path, goes through :meth:`TokenStore.learn`, which
tells the plugin (``on_revoked``) so that the live WebSocket and SSE sessions it concerns end
(:func:`session_ended`). A changed account is one more key, ``user:<id>:<until>``, carried the
same way: the sessions it opened until then end on every instance.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from petstore.access import Principal
from plugins.auth.schema import families, revocations

#: How far back each poll reads again, in seconds: a revocation whose transaction committed late,
#: or whose writer's clock is behind this instance's, is still seen as long as it is within this.
POLL_OVERLAP_SECONDS = 30.0

#: One revoked key (``jti:<id>``, ``family:<id>`` or ``user:<id>:<until>``) and when it stops mattering (epoch seconds).
Entry = tuple[str, float]
Announce = Callable[[Sequence[Entry]], Awaitable[None]]


class Rotation(enum.StrEnum):
    ok = "ok"
    reused = "reused"  # a spent refresh token came back: the family is now revoked
    revoked = "revoked"  # the family was revoked earlier (logout, reuse)
    unknown = "unknown"  # no such family (expired, or never issued here)


def _ttl(seconds: float) -> int:
    return max(1, int(seconds) + 1)


class RevokedKeys:
    """This instance's copy of the live revocations."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._expiry: dict[str, float] = {}
        #: True once the whole table has been read: from then on a miss here is a definite "not revoked".
        self.loaded = False
        #: The newest ``created_at`` seen, on the writers' clocks: where the next poll starts (less the overlap).
        self.watermark = 0.0

    def add(self, key: str, expires_at: float) -> None:
        if expires_at > self._expiry.get(key, 0.0):
            self._expiry[key] = expires_at

    def __contains__(self, key: object) -> bool:
        expiry = self._expiry.get(key) if isinstance(key, str) else None
        return expiry is not None and expiry > self._clock()

    def __len__(self) -> int:
        return len(self._expiry)

    def prune(self) -> None:
        """Forget what has expired: memory follows the tokens that could still be presented."""
        now = self._clock()
        self._expiry = {key: expiry for key, expiry in self._expiry.items() if expiry > now}


def _upsert(connection: AsyncConnection, entries: Sequence[Entry], now: float) -> sa.Executable:
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    statement = insert(revocations).values([{"key": key, "expires_at": exp, "created_at": now} for key, exp in entries])
    # Revoked twice (two logouts racing): keep the later expiry, and the new created_at so pollers read it again.
    later = sa.case(
        (statement.excluded.expires_at > revocations.c.expires_at, statement.excluded.expires_at),
        else_=revocations.c.expires_at,
    )
    return statement.on_conflict_do_update(
        index_elements=[revocations.c.key], set_={"expires_at": later, "created_at": statement.excluded.created_at}
    )


async def _nothing(entries: Sequence[Entry]) -> None:
    return None


def _ignore(keys: list[str]) -> None:
    return None


def user_key(user_id: int, until: float) -> str:
    """The revocation key of an account's sessions opened until ``until`` (Unix time)."""
    return f"user:{user_id}:{math.ceil(until)}"


def session_ended(keys: Iterable[str]) -> Callable[[Principal], bool]:
    """Which live sessions these revocation keys end: a token, a login (family), an account's."""
    tokens: set[str] = set()
    families: set[str] = set()
    users: dict[int, int] = {}
    for key in keys:
        kind, _, rest = key.partition(":")
        if kind == "jti":
            tokens.add(rest)
        elif kind == "family":
            families.add(rest)
        elif kind == "user":
            uid, _, until = rest.partition(":")
            if uid.isdigit() and until.isdigit():
                users[int(uid)] = max(users.get(int(uid), 0), int(until))

    def match(principal: Principal) -> bool:
        until = users.get(principal.user_id)
        return (
            principal.token_id in tokens
            or principal.session in families
            or (until is not None and principal.authenticated_at <= until)
        )

    return match


class TokenStore:
    """Revocations and refresh families in the database at ``engine``; :attr:`revoked` is this instance's copy.

    Database errors (``SQLAlchemyError``, ``OSError``) propagate: the caller turns them into 503.
    """

    def __init__(self, engine: AsyncEngine, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._clock = clock
        self.revoked = RevokedKeys(clock)
        #: Called after each revocation is committed (the feed publishes it to the other instances).
        self.announce: Announce = _nothing
        #: Called with the keys this instance learns are revoked, however it learns of them (its own
        #: revocation, the feed, the poll): the plugin ends the live sessions they concern.
        self.on_revoked: Callable[[list[str]], None] = _ignore

    def learn(self, entries: Iterable[Entry]) -> None:
        """Add revocations to this instance's copy; tell :attr:`on_revoked` of those it did not have."""
        new = []
        for key, expires_at in entries:
            if key not in self.revoked:
                new.append(key)
            self.revoked.add(key, expires_at)
        if new:
            self.on_revoked(new)

    # ------------------------------------------------------------------ the request path

    async def is_revoked(self, jti: str, family: str | None) -> bool:
        keys = [f"jti:{jti}"] + ([f"family:{family}"] if family else [])
        if self.revoked.loaded:
            return any(key in self.revoked for key in keys)
        # Not loaded yet: a miss in memory proves nothing, so the database answers.
        query = sa.select(revocations.c.key).where(
            revocations.c.key.in_(keys), revocations.c.expires_at > self._clock()
        )
        async with self._engine.connect() as connection:
            return (await connection.execute(query.limit(1))).first() is not None

    # ------------------------------------------------------------------ writes

    async def _revoke(self, entries: Sequence[Entry], revoke_family: str | None = None) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(_upsert(connection, entries, self._clock()))
            if revoke_family is not None:
                await connection.execute(
                    sa.update(families).where(families.c.family == revoke_family).values(revoked=True)
                )
        # Committed: this instance refuses the token from now on, the others once they hear of it.
        self.learn(entries)
        await self.announce(entries)

    async def revoke(self, jti: str, jti_ttl: int, family: str, family_ttl: int) -> None:
        """A logout: one access token, and every token of its family (its refresh token can no longer be spent)."""
        now = self._clock()
        entries = [(f"jti:{jti}", now + _ttl(jti_ttl)), (f"family:{family}", now + _ttl(family_ttl))]
        await self._revoke(entries, revoke_family=family)

    async def end_user_sessions(self, user_id: int, ttl: int) -> None:
        """An account changed (deleted, renamed, a new password): the sessions it opened until now
        end, on every instance. Its tokens are refused already (the credential stamp, the name
        looked up); this record only carries the news, for as long as such a session can live."""
        now = self._clock()
        await self._revoke([(user_key(user_id, now), now + _ttl(ttl))])

    async def start_family(self, family: str, jti: str, ttl: int) -> None:
        """A login: ``jti`` is the only refresh token of the new family that may be spent."""
        async with self._engine.begin() as connection:
            await connection.execute(
                sa.insert(families).values(
                    family=family, current_jti=jti, expires_at=self._clock() + _ttl(ttl), revoked=False
                )
            )

    async def rotate(self, family: str, presented: str, new: str, ttl: int, revoked_ttl: int) -> Rotation:
        """Spend ``presented`` for ``new`` (the family then lives ``ttl`` more seconds).

        On reuse the family is revoked, and its access tokens refused for ``revoked_ttl`` seconds
        (as long as any of them can live).
        """
        now = self._clock()
        async with self._engine.begin() as connection:
            spent = await connection.execute(
                sa.update(families)
                .where(
                    families.c.family == family,
                    families.c.current_jti == presented,
                    sa.not_(families.c.revoked),
                    families.c.expires_at > now,
                )
                .values(current_jti=new, expires_at=now + _ttl(ttl))
            )
            if spent.rowcount == 1:
                return Rotation.ok
            row = (
                await connection.execute(
                    sa.select(families.c.revoked, families.c.expires_at).where(families.c.family == family)
                )
            ).first()
        if row is None or row.expires_at <= now:
            return Rotation.unknown
        if row.revoked:
            return Rotation.revoked
        # The family is alive and its newest token is another: a spent one came back.
        await self._revoke([(f"family:{family}", now + _ttl(revoked_ttl))], revoke_family=family)
        return Rotation.reused

    # ------------------------------------------------------------------ keeping the copy fresh

    async def poll(self) -> int:
        """Read revocations written since the last poll (the whole live table the first time); how many."""
        now = self._clock()
        query = sa.select(revocations.c.key, revocations.c.expires_at, revocations.c.created_at).where(
            revocations.c.expires_at > now
        )
        if self.revoked.loaded:
            query = query.where(revocations.c.created_at > self.revoked.watermark - POLL_OVERLAP_SECONDS)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).all()
        self.learn((key, expires_at) for key, expires_at, _ in rows)
        for *_, created_at in rows:
            self.revoked.watermark = max(self.revoked.watermark, created_at)
        self.revoked.loaded = True
        self.revoked.prune()
        return len(rows)

    async def prune(self) -> None:
        """Delete the rows of tokens that have expired (any instance may, at any time)."""
        now = self._clock()
        async with self._engine.begin() as connection:
            await connection.execute(sa.delete(revocations).where(revocations.c.expires_at <= now))
            await connection.execute(sa.delete(families).where(families.c.expires_at <= now))
