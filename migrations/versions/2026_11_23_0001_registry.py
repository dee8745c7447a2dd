"""Checkpoints, their files, tensors and aliases.

Revision ID: 20261123_0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "20261123_0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("filename", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("uncompressed_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("parameter_count", sa.BigInteger, nullable=False),
        sa.Column("parameters_by_dtype", sa.JSON, nullable=False),
        sa.Column("tensor_count", sa.Integer, nullable=False),
        sa.Column("bytes_per_parameter", sa.Float),
        sa.Column("weights_digest", sa.String(64), nullable=False),
        sa.Column("largest_tensors", sa.JSON, nullable=False),
        sa.Column("architecture", sa.JSON),
        sa.Column("config", sa.JSON),
        sa.Column("training", sa.JSON),
        sa.Column("tokenizer", sa.JSON, nullable=False),
        sa.Column("user_metadata", sa.JSON, nullable=False),
    )
    op.create_index("uq_checkpoints_name_version", "checkpoints", ["name", "version"], unique=True)
    op.create_index("uq_checkpoints_name_sha256", "checkpoints", ["name", "sha256"], unique=True)
    op.create_index("ix_checkpoints_weights_digest", "checkpoints", ["weights_digest"])

    op.create_table(
        "checkpoint_files",
        sa.Column(
            "checkpoint_id",
            sa.String(32),
            sa.ForeignKey("checkpoints.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
    )
    op.create_index("ix_checkpoint_files_sha256", "checkpoint_files", ["sha256"])

    op.create_table(
        "tensors",
        sa.Column(
            "checkpoint_id",
            sa.String(32),
            sa.ForeignKey("checkpoints.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(1024), primary_key=True),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("shape", sa.JSON, nullable=False),
        sa.Column("numel", sa.BigInteger, nullable=False),
        sa.Column("nbytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("file", sa.String(1024), nullable=False),
    )

    op.create_table(
        "aliases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column(
            "checkpoint_id",
            sa.String(32),
            sa.ForeignKey("checkpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_aliases_checkpoint_id", "aliases", ["checkpoint_id"])


def downgrade() -> None:
    op.drop_table("aliases")
    op.drop_table("tensors")
    op.drop_table("checkpoint_files")
    op.drop_table("checkpoints")
