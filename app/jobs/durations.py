"""Finished jobs' run times as histogram buckets kept in the database, counted as jobs finish.

Each finish adds one job and its seconds to the one bucket its duration falls in, inside the
transaction that finishes the job: every worker process adds to the same rows, the counts never
go backwards, and pruning the jobs table leaves them alone. Reading the histogram is a scan of
(kinds × states × buckets) rows, whatever the number of jobs ever run.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.models import JobDurationBucket

# Changing these needs a migration that re-buckets the stored counts (the stored `le` labels).
JOB_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
INF = "+Inf"


@dataclass
class Histogram:
    """One (kind, state)'s cumulative buckets as Prometheus wants them: (le, count) pairs."""

    buckets: list[tuple[str, int]] = field(default_factory=list)
    total_seconds: float = 0.0


def bucket_label(seconds: float) -> str:
    """The upper bound of the bucket `seconds` falls in (Prometheus: value <= le)."""
    index = bisect_left(JOB_DURATION_BUCKETS, seconds)
    return INF if index == len(JOB_DURATION_BUCKETS) else str(float(JOB_DURATION_BUCKETS[index]))


def run_seconds(started_at: datetime | None, finished_at: datetime) -> float:
    """Started to finished (the last attempt's start: a retried job restarts its clock)."""
    if started_at is None:
        return 0.0
    return max(0.0, (_aware(finished_at) - _aware(started_at)).total_seconds())


def record_duration(session: Session, kind: str, state: str, seconds: float) -> None:
    """Count one finished job, in the caller's transaction (an upsert: concurrent workers)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(JobDurationBucket).values(
        kind=kind, state=state, le=bucket_label(seconds), jobs=1, seconds=seconds
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["kind", "state", "le"],
            set_={
                "jobs": JobDurationBucket.jobs + 1,
                "seconds": JobDurationBucket.seconds + seconds,
            },
        )
    )


def read_histograms(session: Session) -> dict[tuple[str, str], Histogram]:
    """(kind, state) -> its histogram over JOB_DURATION_BUCKETS, from the stored counts."""
    per_bucket: dict[tuple[str, str], dict[float, int]] = {}
    histograms: dict[tuple[str, str], Histogram] = {}
    for row in session.scalars(select(JobDurationBucket)):
        key = (row.kind, row.state)
        counts = per_bucket.setdefault(key, {})
        counts[float(row.le)] = counts.get(float(row.le), 0) + row.jobs
        histograms.setdefault(key, Histogram()).total_seconds += row.seconds
    for key, counts in per_bucket.items():
        histograms[key].buckets = _cumulative(counts)
    return histograms


def _cumulative(counts: dict[float, int]) -> list[tuple[str, int]]:
    bounds = [float(b) for b in JOB_DURATION_BUCKETS] + [math.inf]
    pairs = []
    for bound in bounds:
        label = INF if bound == math.inf else str(bound)
        pairs.append((label, sum(n for le, n in counts.items() if le <= bound)))
    return pairs


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored in UTC); PostgreSQL aware ones.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
