"""A job queue in the database.

Workers claim the oldest runnable job (queued, or running with an expired lease) and extend the
lease with heartbeats. A worker that dies stops heartbeating, its lease expires and the job is
claimed again, up to `max_attempts`; after that it fails with the reason. On PostgreSQL the claim
uses `FOR UPDATE SKIP LOCKED`; on SQLite the write transaction (BEGIN IMMEDIATE) serialises it.
Finishing a job counts its duration (app.jobs.durations); finished jobs are pruned after a
retention time and beyond a retention count (`prune`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    and_,
    delete,
    exists,
    false,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from app.db.engine import Database
from app.db.models import Job, Verification, utcnow
from app.jobs.durations import record_duration, run_seconds

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
# A job that does nothing: the queue's own tests and bench/scale.py measure claiming with it.
NOOP_JOB = "noop"
DEFAULT_MAX_ATTEMPTS = 3
FINISHED = (SUCCEEDED, FAILED)
# A verification in these states still waits on its job: its row is never pruned.
UNFINISHED_VERIFICATION = ("queued", "running")
PRUNE_BATCH = 500


class LeaseLost(RuntimeError):
    """The worker no longer owns the job (its lease expired and another worker took it)."""


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    kind: str
    subject_id: str
    attempt: int
    worker_id: str


@dataclass(frozen=True)
class ExhaustedJob:
    id: str
    kind: str
    subject_id: str
    error: str


@dataclass(frozen=True)
class Retention:
    """Finished jobs older than `seconds`, or beyond the newest `count`, are deleted."""

    seconds: float
    count: int


OnExhausted = Callable[[Session, ExhaustedJob], None]


def enqueue(
    session: Session, kind: str, subject_id: str, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> Job:
    """Add a job inside the caller's transaction, so it exists only if the subject does."""
    job = Job(kind=kind, subject_id=subject_id, state=QUEUED, attempts=0, max_attempts=max_attempts)
    session.add(job)
    return job


class JobQueue:
    def __init__(self, db: Database, lease_seconds: float) -> None:
        self.db = db
        self.lease = timedelta(seconds=lease_seconds)

    def claim(self, worker_id: str) -> ClaimedJob | None:
        with self.db.transaction() as session:
            now = utcnow()
            query = (
                select(Job)
                .where(_runnable(now), Job.attempts < Job.max_attempts)
                .order_by(Job.created_at, Job.id)
                .limit(1)
            )
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            job = session.scalars(query).first()
            if job is None:
                return None
            job.state, job.worker_id = RUNNING, worker_id
            job.attempts += 1
            job.started_at = job.heartbeat_at = now
            job.leased_until = now + self.lease
            return ClaimedJob(job.id, job.kind, job.subject_id, job.attempts, worker_id)

    def reap_exhausted(self, on_exhausted: OnExhausted | None = None) -> list[ExhaustedJob]:
        """Fail jobs whose lease expired on their last allowed attempt; returns them.

        `on_exhausted` records the failure on the job's subject in the same transaction.
        """
        with self.db.transaction() as session:
            now = utcnow()
            query = select(Job).where(
                Job.state == RUNNING, Job.leased_until < now, Job.attempts >= Job.max_attempts
            )
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            reaped = []
            for job in session.scalars(query):
                job.state, job.finished_at = FAILED, now
                job.error = (
                    f"the worker running it stopped responding on all {job.attempts} attempts "
                    "(killed or out of memory?)"
                )
                record_duration(session, job.kind, FAILED, run_seconds(job.started_at, now))
                exhausted = ExhaustedJob(job.id, job.kind, job.subject_id, job.error)
                if on_exhausted is not None:
                    on_exhausted(session, exhausted)
                reaped.append(exhausted)
            return reaped

    def heartbeat(self, job: ClaimedJob) -> None:
        with self.db.transaction() as session:
            result = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.worker_id == job.worker_id, Job.state == RUNNING)
                .values(heartbeat_at=utcnow(), leased_until=utcnow() + self.lease)
            )
            if not getattr(result, "rowcount", 0):
                raise LeaseLost(job.id)

    def finish(self, session: Session, job: ClaimedJob, *, error: str | None = None) -> None:
        """Mark the job done inside the caller's transaction (with the job's results)."""
        row = session.get(Job, job.id, with_for_update=not self.db.is_sqlite)
        if row is None or row.worker_id != job.worker_id or row.state != RUNNING:
            raise LeaseLost(job.id)
        row.state = FAILED if error else SUCCEEDED
        row.error = error
        row.finished_at = utcnow()
        row.leased_until = None
        record_duration(session, row.kind, row.state, run_seconds(row.started_at, row.finished_at))

    def complete(self, job: ClaimedJob) -> None:
        """Mark a job that has no results of its own (a `noop`) as succeeded."""
        with self.db.transaction() as session:
            self.finish(session, job)

    def prune(self, retention: Retention, *, max_batches: int = 100) -> int:
        """Delete finished jobs past `retention`, `PRUNE_BATCH` per short transaction.

        Never a queued or running job, nor one whose verification still waits on it. Returns
        how many were deleted (at most `max_batches` batches: the worker has jobs to claim).
        """
        deleted = 0
        for _ in range(max_batches):
            with self.db.transaction() as session:
                ids = self._prunable(session, retention)
                if ids:
                    session.execute(delete(Job).where(Job.id.in_(ids), Job.state.in_(FINISHED)))
            deleted += len(ids)
            if len(ids) < PRUNE_BATCH:
                break
        return deleted

    def _prunable(self, session: Session, retention: Retention) -> list[str]:
        past = Job.finished_at < utcnow() - timedelta(seconds=retention.seconds)
        beyond_count = _beyond_count(session, retention.count)
        waiting = exists().where(
            Verification.id == Job.subject_id, Verification.status.in_(UNFINISHED_VERIFICATION)
        )
        query = (
            select(Job.id)
            .where(Job.state.in_(FINISHED), or_(past, beyond_count), ~waiting)
            .order_by(Job.finished_at, Job.id)
            .limit(PRUNE_BATCH)
        )
        if not self.db.is_sqlite:  # two workers pruning at once take different rows
            query = query.with_for_update(skip_locked=True, of=Job)
        return list(session.scalars(query))


def _beyond_count(session: Session, count: int) -> ColumnElement[bool]:
    """Finished jobs older than the newest `count` (ordered by finish time, then id)."""
    if count <= 0:
        return true()
    oldest_kept = session.execute(
        select(Job.finished_at, Job.id)
        .where(Job.state.in_(FINISHED))
        .order_by(Job.finished_at.desc(), Job.id.desc())
        .offset(count - 1)
        .limit(1)
    ).first()
    if oldest_kept is None:
        return false()
    return tuple_(Job.finished_at, Job.id) < tuple_(oldest_kept[0], oldest_kept[1])


def _runnable(now: datetime) -> ColumnElement[bool]:
    return or_(Job.state == QUEUED, and_(Job.state == RUNNING, Job.leased_until < now))
