"""The auth plugin's own tables, created by its Alembic branch (``plugins/auth/migrations``).

They are kept apart from the core's models on a :class:`~sqlalchemy.MetaData` of their own: the
core knows nothing of auth, and ``petstore migrate`` runs this branch only when the plugin is loaded.
Times are seconds since the epoch (``time.time()``), the same on every database.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from petstore.plugin import PluginMigrations

metadata = sa.MetaData()

#: ``jti:<id>`` (one access token) or ``family:<id>`` (every token of one login), until ``expires_at``.
revocations = sa.Table(
    "auth_revocation",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Double(), nullable=False),
    # When the row was written, on the writer's clock: what each instance polls for.
    sa.Column("created_at", sa.Double(), nullable=False),
    sa.Index("ix_auth_revocation_created_at", "created_at"),
    sa.Index("ix_auth_revocation_expires_at", "expires_at"),
)

#: One login's chain of refresh tokens: only ``current_jti`` may be spent next.
families = sa.Table(
    "auth_refresh_family",
    metadata,
    sa.Column("family", sa.String(64), primary_key=True),
    sa.Column("current_jti", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Double(), nullable=False),
    sa.Column("revoked", sa.Boolean(), nullable=False),
    sa.Index("ix_auth_refresh_family_expires_at", "expires_at"),
)

MIGRATIONS = PluginMigrations(versions=Path(__file__).parent / "migrations", metadata=metadata)
