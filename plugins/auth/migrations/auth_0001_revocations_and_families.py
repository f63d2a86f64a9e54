"""Auth: revoked tokens and refresh-token families, shared by every instance through the database.

Revision ID: auth_0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "auth_0001"
down_revision: str | None = None
# A branch of its own, beside the core's: its tables refer to none of the core's.
branch_labels: str | Sequence[str] | None = ("auth",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "auth_revocation",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_auth_revocation_created_at", "auth_revocation", ["created_at"])
    op.create_index("ix_auth_revocation_expires_at", "auth_revocation", ["expires_at"])
    op.create_table(
        "auth_refresh_family",
        sa.Column("family", sa.String(length=64), nullable=False),
        sa.Column("current_jti", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("family"),
    )
    op.create_index("ix_auth_refresh_family_expires_at", "auth_refresh_family", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_auth_refresh_family_expires_at", table_name="auth_refresh_family")
    op.drop_table("auth_refresh_family")
    op.drop_index("ix_auth_revocation_expires_at", table_name="auth_revocation")
    op.drop_index("ix_auth_revocation_created_at", table_name="auth_revocation")
    op.drop_table("auth_revocation")
