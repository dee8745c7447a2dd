"""Job-duration histogram counted as jobs finish; indexes for pruning and counting jobs.

The histogram starts from the finished jobs already in the table, so upgrading keeps it whole.

Revision ID: 20261202_0004
Revises: 20261123_0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "20261202_0004"
down_revision: str | Sequence[str] | None = "20261123_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# app.jobs.durations.JOB_DURATION_BUCKETS when this revision was written.
BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

jobs = sa.table(
    "jobs",
    sa.column("kind", sa.String),
    sa.column("state", sa.String),
    sa.column("started_at", sa.DateTime(timezone=True)),
    sa.column("finished_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    buckets = op.create_table(
        "job_duration_buckets",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("le", sa.String(16), primary_key=True),
        sa.Column("jobs", sa.BigInteger, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
    )
    op.create_index("ix_jobs_state_finished_at", "jobs", ["state", "finished_at"])
    op.create_index("ix_jobs_kind_state", "jobs", ["kind", "state"])
    assert buckets is not None
    op.bulk_insert(buckets, _existing_durations())


def downgrade() -> None:
    op.drop_index("ix_jobs_kind_state", "jobs")
    op.drop_index("ix_jobs_state_finished_at", "jobs")
    op.drop_table("job_duration_buckets")


def _existing_durations() -> list[dict[str, object]]:
    finished = op.get_bind().execute(
        sa.select(jobs.c.kind, jobs.c.state, jobs.c.started_at, jobs.c.finished_at).where(
            jobs.c.state.in_(("succeeded", "failed")), jobs.c.finished_at.is_not(None)
        )
    )
    counts: dict[tuple[str, str, str], list[float]] = {}
    for kind, state, started_at, finished_at in finished:
        seconds = _seconds(started_at, finished_at)
        counts.setdefault((kind, state, _label(seconds)), []).append(seconds)
    return [
        {"kind": kind, "state": state, "le": le, "jobs": len(values), "seconds": sum(values)}
        for (kind, state, le), values in sorted(counts.items())
    ]


def _label(seconds: float) -> str:
    index = bisect_left(BUCKETS, seconds)
    return "+Inf" if index == len(BUCKETS) else str(float(BUCKETS[index]))


def _seconds(started_at: datetime | None, finished_at: datetime) -> float:
    if started_at is None:
        return 0.0
    return max(0.0, (_aware(finished_at) - _aware(started_at)).total_seconds())


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
