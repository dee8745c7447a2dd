"""Drop checkpoints.error: nothing ever wrote it (every row is stored once inspected, ready).

Resumable uploads, inspected after they arrive, will bring pending/failed back with a reason.
DROP COLUMN in place (SQLite >= 3.35, PostgreSQL): a batch rebuild of `checkpoints` would drop
the old table, and with foreign keys on that cascades into its files, tensors and aliases.

Revision ID: 20261202_0005
Revises: 20261202_0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "20261202_0005"
down_revision: str | Sequence[str] | None = "20261202_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE checkpoints DROP COLUMN error")


def downgrade() -> None:
    op.execute("ALTER TABLE checkpoints ADD COLUMN error TEXT")
