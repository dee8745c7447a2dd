"""Blob leases: what an upload is about to reference, and what a collector is deleting.

Garbage collection checks them in the transaction that decides to delete a blob, instead of a
per-process lock held across the transfer (app.storage.leases).

Revision ID: 20261202_0006
Revises: 20261202_0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261202_0006"
down_revision: str | Sequence[str] | None = "20261202_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blob_leases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_blob_leases_sha256_expires_at", "blob_leases", ["sha256", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_blob_leases_sha256_expires_at", "blob_leases")
    op.drop_table("blob_leases")
