"""Finished jobs are pruned past their retention; the duration histogram is counted as jobs
finish and outlives them. Real database (SQLite, or PostgreSQL on that pass), real queue."""

from __future__ import annotations

import time
from bisect import bisect_left
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from app.db.engine import Database
from app.db.migrate import alembic_config, upgrade
from app.db.models import Checkpoint, CheckpointFile, Job, Verification, new_id, utcnow
from app.jobs.durations import INF, JOB_DURATION_BUCKETS, read_histograms, run_seconds
from app.jobs.queue import (
    FAILED,
    NOOP_JOB,
    PRUNE_BATCH,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobQueue,
    Retention,
    enqueue,
)
from app.services.verifications import VERIFY_JOB
from tests.postgres.processes import enqueue_noops
from tests.worker_process import WorkerProcess

# Seconds each job "ran": one per bucket and past the last (the clock is moved, not slept).
RUN_SECONDS = [0.0, 0.3, 0.45, 2.0, 7.0, 45.0, 299.0, 5000.0]
KEEP_ALL = Retention(seconds=365 * 24 * 3600, count=1_000_000)
KEEP_NONE = Retention(seconds=0, count=0)


@pytest.fixture
def db(migrated_database: Database) -> Database:
    return migrated_database


def run_jobs(db: Database, queue: JobQueue, seconds: list[float], *, error: str | None) -> None:
    """Claim and finish one noop job per entry, as if it had run that many seconds."""
    enqueue_noops(db, len(seconds))
    for duration in seconds:
        job = queue.claim("test-worker")
        assert job is not None
        started = utcnow() - timedelta(seconds=duration)
        with db.transaction() as session:
            session.execute(update(Job).where(Job.id == job.id).values(started_at=started))
        with db.transaction() as session:
            queue.finish(session, job, error=error)


def expected_buckets(db: Database, state: str) -> tuple[list[tuple[str, int]], float]:
    """Prometheus buckets computed from the finished jobs' own timestamps."""
    with db.reading() as session:
        rows = session.execute(
            select(Job.started_at, Job.finished_at).where(Job.state == state)
        ).all()
    durations = sorted(run_seconds(start, end) for start, end in rows if end is not None)
    bounds = [float(b) for b in JOB_DURATION_BUCKETS]
    buckets = [(str(b), bisect_left(durations, b + 1e-9)) for b in bounds]
    return [*buckets, (INF, len(durations))], sum(durations)


def histogram(db: Database, state: str) -> tuple[list[tuple[str, int]], float]:
    with db.reading() as session:
        found = read_histograms(session)[(NOOP_JOB, state)]
    return found.buckets, found.total_seconds


def finished_job(kind: str, state: str, finished: datetime, *, ran_for: float) -> dict[str, Any]:
    """A jobs row to insert in bulk, finished at `finished` after `ran_for` seconds."""
    started = finished - timedelta(seconds=ran_for)
    return {
        "id": new_id(),
        "kind": kind,
        "subject_id": new_id(),
        "state": state,
        "attempts": 1,
        "max_attempts": 3,
        "created_at": started,
        "started_at": started,
        "finished_at": finished,
    }


def insert_checkpoint(session: Session) -> str:
    """A checkpoint row and one file, written with Core (the schema may predate the models)."""
    checkpoint_id = new_id()
    session.execute(
        insert(Checkpoint).values(
            id=checkpoint_id,
            name="retained",
            version=1,
            status="ready",
            format="safetensors",
            created_at=utcnow(),
            size_bytes=8,
            uncompressed_bytes=8,
            sha256="0" * 64,
            parameter_count=2,
            parameters_by_dtype={"float32": 2},
            tensor_count=1,
            weights_digest="1" * 64,
            largest_tensors=[],
            tokenizer={"present": False},
            user_metadata={},
        )
    )
    session.execute(
        insert(CheckpointFile).values(
            checkpoint_id=checkpoint_id,
            path="model.safetensors",
            size=8,
            sha256="0" * 64,
            origin="member",
        )
    )
    return checkpoint_id


def job_count(db: Database, *states: str) -> int:
    with db.reading() as session:
        query = select(func.count()).select_from(Job).where(Job.state.in_(states))
        return session.scalar(query) or 0


def test_the_histogram_equals_the_jobs_that_ran_and_survives_pruning(db: Database) -> None:
    queue = JobQueue(db, lease_seconds=30)
    run_jobs(db, queue, RUN_SECONDS, error=None)
    run_jobs(db, queue, [1.5, 100.0], error="it broke")
    expected = {state: expected_buckets(db, state) for state in (SUCCEEDED, FAILED)}
    for state, (buckets, total) in expected.items():
        found_buckets, found_total = histogram(db, state)
        assert found_buckets == buckets
        assert found_total == pytest.approx(total, abs=1e-3)
    succeeded = dict(expected[SUCCEEDED][0])
    assert succeeded["0.1"] == 1 and succeeded["0.5"] == 3 and succeeded["3600.0"] == 7
    assert succeeded[INF] == len(RUN_SECONDS)

    assert queue.prune(KEEP_NONE) == len(RUN_SECONDS) + 2
    assert job_count(db, SUCCEEDED, FAILED) == 0
    for state, (buckets, total) in expected.items():
        found_buckets, found_total = histogram(db, state)
        assert found_buckets == buckets
        assert found_total == pytest.approx(total, abs=1e-3)


def test_a_reaped_job_is_counted_as_failed(db: Database) -> None:
    queue = JobQueue(db, lease_seconds=0.05)
    with db.transaction() as session:
        enqueue(session, NOOP_JOB, new_id(), max_attempts=1)
    assert queue.claim("a-worker-that-dies") is not None
    time.sleep(0.1)
    [reaped] = queue.reap_exhausted()
    buckets, total = histogram(db, FAILED)
    expected, expected_total = expected_buckets(db, FAILED)
    assert buckets == expected and total == pytest.approx(expected_total)
    assert dict(buckets)[INF] == 1 and dict(buckets)["0.1"] == 0 and total >= 0.1
    assert reaped.error.startswith("the worker running it stopped responding")


def test_pruning_keeps_unfinished_jobs_and_the_newest_count(db: Database) -> None:
    queue = JobQueue(db, lease_seconds=30)
    run_jobs(db, queue, [0.0] * 5, error=None)
    enqueue_noops(db, 2)  # queued
    assert queue.claim("busy-worker") is not None  # one of them running
    assert queue.prune(KEEP_ALL) == 0
    assert queue.prune(Retention(seconds=365 * 24 * 3600, count=3)) == 2
    assert job_count(db, SUCCEEDED) == 3
    assert queue.prune(KEEP_NONE) == 3
    assert job_count(db, SUCCEEDED, FAILED) == 0
    assert job_count(db, QUEUED) == 1 and job_count(db, RUNNING) == 1


def test_pruning_by_age_spares_the_recent_jobs(db: Database) -> None:
    queue = JobQueue(db, lease_seconds=30)
    run_jobs(db, queue, [0.0] * 4, error=None)
    with db.transaction() as session:
        old = session.scalars(select(Job.id).order_by(Job.finished_at).limit(3)).all()
        session.execute(
            update(Job).where(Job.id.in_(old)).values(finished_at=utcnow() - timedelta(days=8))
        )
    assert queue.prune(Retention(seconds=7 * 24 * 3600, count=1_000_000)) == 3
    with db.reading() as session:
        assert set(session.scalars(select(Job.id))).isdisjoint(old)
    assert job_count(db, SUCCEEDED) == 1


def test_pruning_spares_a_job_whose_verification_still_waits_on_it(db: Database) -> None:
    """A reap that failed the job but died before writing the report leaves this state."""
    queue = JobQueue(db, lease_seconds=30)
    with db.transaction() as session:
        checkpoint_id = insert_checkpoint(session)
        waiting = Verification(checkpoint_id=checkpoint_id, status="running", request={})
        session.add(waiting)
        session.flush()
        enqueue(session, VERIFY_JOB, waiting.id)
    job = queue.claim("test-worker")
    assert job is not None
    with db.transaction() as session:
        queue.finish(session, job, error="stopped responding")
    assert queue.prune(KEEP_NONE) == 0
    with db.transaction() as session:
        row = session.get(Verification, waiting.id)
        assert row is not None
        row.status = "error"
    assert queue.prune(KEEP_NONE) == 1


def test_pruning_deletes_in_batches(db: Database) -> None:
    """Thousands of finished rows go in several short transactions, oldest first."""
    count = 2 * PRUNE_BATCH + 137
    finished = utcnow() - timedelta(days=30)
    rows = [
        finished_job(NOOP_JOB, SUCCEEDED, finished + timedelta(microseconds=i), ran_for=0)
        for i in range(count)
    ]
    with db.transaction() as session:
        session.execute(insert(Job), rows)
    queue = JobQueue(db, lease_seconds=30)
    assert queue.prune(Retention(seconds=365 * 24 * 3600, count=100), max_batches=1) == PRUNE_BATCH
    assert queue.prune(Retention(seconds=365 * 24 * 3600, count=100)) == count - 100 - PRUNE_BATCH
    with db.reading() as session:
        kept = set(session.scalars(select(Job.id)))
    assert kept == {row["id"] for row in rows[-100:]}


def test_the_worker_prunes_finished_jobs(database_url: str, tmp_path: Path) -> None:
    upgrade(database_url)
    db = Database(database_url)
    try:
        enqueue_noops(db, 5)
        env = {"CKPT_JOB_RETENTION_COUNT": "2", "CKPT_JOB_PRUNE_SECONDS": "0.2"}
        with WorkerProcess(tmp_path / "data", CKPT_DATABASE_URL=database_url, **env):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if job_count(db, QUEUED, RUNNING) == 0 and job_count(db, SUCCEEDED) == 2:
                    break
                time.sleep(0.1)
        assert job_count(db, QUEUED, RUNNING) == 0
        assert job_count(db, SUCCEEDED) == 2
        buckets, _ = histogram(db, SUCCEEDED)
        assert dict(buckets)[INF] == 5
    finally:
        db.dispose()


def test_upgrading_counts_the_jobs_already_finished(database_url: str) -> None:
    """The migration starts the histogram from the table, and leaves the checkpoints whole."""
    config = alembic_config(database_url)
    command.upgrade(config, "20261123_0003")
    db = Database(database_url)
    try:
        finished = utcnow()
        rows = [
            finished_job(VERIFY_JOB, state, finished, ran_for=seconds)
            for state, seconds in [(SUCCEEDED, 0.2), (SUCCEEDED, 40.0), (FAILED, 9000.0)]
        ]
        with db.transaction() as session:
            session.execute(insert(Job), rows)
            checkpoint_id = insert_checkpoint(session)
        command.upgrade(config, "head")
        with db.reading() as session:
            histograms = read_histograms(session)
            files = session.scalar(select(func.count()).select_from(CheckpointFile))
            assert session.scalars(select(Checkpoint.id)).all() == [checkpoint_id]
        ok = dict(histograms[(VERIFY_JOB, SUCCEEDED)].buckets)
        assert ok["0.1"] == 0 and ok["0.5"] == 1 and ok["30.0"] == 1 and ok["60.0"] == 2
        assert histograms[(VERIFY_JOB, SUCCEEDED)].total_seconds == pytest.approx(40.2)
        failed = dict(histograms[(VERIFY_JOB, FAILED)].buckets)
        assert failed["3600.0"] == 0 and failed[INF] == 1
        assert files == 1
    finally:
        db.dispose()
