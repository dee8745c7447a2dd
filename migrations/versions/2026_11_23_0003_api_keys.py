"""API keys, and who uploaded each checkpoint (for per-key storage quotas).

Revision ID: 20261123_0003
Revises: 20261123_0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261123_0003"
down_revision: str | Sequence[str] | None = "20261123_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("quota_bytes", sa.BigInteger),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("uq_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
    with op.batch_alter_table("checkpoints") as batch:
        batch.add_column(sa.Column("uploaded_by", sa.String(32)))
        batch.create_index("ix_checkpoints_uploaded_by", ["uploaded_by"])


def downgrade() -> None:
    with op.batch_alter_table("checkpoints") as batch:
        batch.drop_index("ix_checkpoints_uploaded_by")
        batch.drop_column("uploaded_by")
    op.drop_table("api_keys")
