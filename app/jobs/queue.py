"""A job queue in the database.

Workers claim the oldest runnable job (queued, or running with an expired lease) and extend the
lease with heartbeats. A worker that dies stops heartbeating, its lease expires and the job is
claimed again, up to `max_attempts`; after that it fails with the reason. On PostgreSQL the claim
uses `FOR UPDATE SKIP LOCKED`; on SQLite the write transaction (BEGIN IMMEDIATE) serialises it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from app.db.engine import Database
from app.db.models import Job, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
# A job that does nothing: the queue's own tests and bench/scale.py measure claiming with it.
NOOP_JOB = "noop"
DEFAULT_MAX_ATTEMPTS = 3


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

    def reap_exhausted(self) -> list[ExhaustedJob]:
        """Fail jobs whose lease expired on their last allowed attempt; returns them."""
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
                reaped.append(ExhaustedJob(job.id, job.kind, job.subject_id, job.error))
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

    def complete(self, job: ClaimedJob) -> None:
        """Mark a job that has no results of its own (a `noop`) as succeeded."""
        with self.db.transaction() as session:
            self.finish(session, job)

    def release(self, job: ClaimedJob) -> None:
        """Give an unfinished job back without counting the attempt (clean shutdown)."""
        with self.db.transaction() as session:
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.worker_id == job.worker_id, Job.state == RUNNING)
                .values(state=QUEUED, worker_id=None, leased_until=None, attempts=Job.attempts - 1)
            )


def _runnable(now: datetime) -> ColumnElement[bool]:
    return or_(Job.state == QUEUED, and_(Job.state == RUNNING, Job.leased_until < now))
