"""GET /metrics' job-duration histogram: the durations of the jobs that ran, still there after
the jobs table was pruned (it is counted as jobs finish, not read from the table)."""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select, update

from app.db.models import Job, Verification, utcnow
from app.jobs.durations import INF, JOB_DURATION_BUCKETS
from app.jobs.queue import SUCCEEDED, JobQueue, Retention
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.observability.scrape import Scrape, scrape

LABELS = {"kind": "verify", "state": SUCCEEDED}
RAN_FOR = [0.05, 3.0, 200.0, 4000.0]


def histogram(found: Scrape) -> tuple[dict[str, float], float, float]:
    buckets = {
        s.labels["le"]: s.value
        for s in found.series("ckpt_job_duration_seconds_bucket")
        if s.labels.items() >= LABELS.items()
    }
    count = found.value("ckpt_job_duration_seconds_count", **LABELS)
    return buckets, count, found.value("ckpt_job_duration_seconds_sum", **LABELS)


def test_the_histogram_is_the_jobs_that_ran_and_outlives_them(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    db = server.app.state.db
    queue = JobQueue(db, lease_seconds=30)
    for index in range(len(RAN_FOR)):
        assert upload_raw(client, tiny.safetensors, f"timed-{index}").status_code == 201
    for seconds in RAN_FOR:  # each verify job "ran" this long: its start is moved back
        job = queue.claim("test-worker")
        assert job is not None
        with db.transaction() as session:
            started = utcnow() - timedelta(seconds=seconds)
            session.execute(update(Job).where(Job.id == job.id).values(started_at=started))
        with db.transaction() as session:  # as the worker does: the report with the finish
            queue.finish(session, job)
            session.execute(
                update(Verification)
                .where(Verification.id == job.subject_id)
                .values(status="passed", finished_at=utcnow())
            )
    with db.reading() as session:
        rows = session.execute(select(Job.started_at, Job.finished_at)).all()
    durations = [(finished - started).total_seconds() for started, finished in rows]
    expected = {str(float(b)): sum(d <= b for d in durations) for b in JOB_DURATION_BUCKETS}

    buckets, count, total = histogram(scrape(client))
    assert buckets == {**expected, INF: len(RAN_FOR)}
    assert count == len(RAN_FOR) and abs(total - sum(durations)) < 1e-3
    assert buckets["0.1"] == 1 and buckets["5.0"] == 2 and buckets["3600.0"] == 3

    assert queue.prune(Retention(seconds=0, count=0)) == len(RAN_FOR)
    after = scrape(client)
    assert after.value("ckpt_jobs", **LABELS) == 0
    assert histogram(after) == (buckets, count, total)
