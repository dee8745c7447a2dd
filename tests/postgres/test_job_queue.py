"""The job queue on PostgreSQL with real `ckpt worker` processes competing for the rows."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db.engine import Database
from app.db.models import Job
from app.jobs.queue import SUCCEEDED
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.postgres.processes import (
    LoggedWorker,
    enqueue_noops,
    starts_per_job,
    wait_until_ready,
    wait_until_succeeded,
)
from tests.worker.test_worker_lifecycle import jobs_for, wait_until_running
from tests.worker_process import wait_for_report

pytestmark = pytest.mark.postgres_only

WORKERS, JOBS = 4, 200


@pytest.fixture
def database(migrated_database: Database) -> Database:
    return migrated_database


def test_four_workers_run_each_of_200_jobs_exactly_once(database: Database, tmp_path: Path) -> None:
    with ExitStack() as stack:
        workers = [
            stack.enter_context(
                LoggedWorker(tmp_path / "data", tmp_path / f"worker{i}.log", **_env(database))
            )
            for i in range(WORKERS)
        ]
        worker_ids = wait_until_ready(workers)
        job_ids = enqueue_noops(database, JOBS)
        wait_until_succeeded(database, JOBS)
    # Each job started exactly once, by the workers' own account...
    assert starts_per_job(workers) == dict.fromkeys(job_ids, 1)
    # ...and by the table's: one attempt, finished by one of these workers.
    with database.reading() as session:
        rows = list(session.scalars(select(Job)))
    assert {row.id for row in rows} == set(job_ids)
    assert all(row.state == SUCCEEDED and row.attempts == 1 for row in rows)
    ran_by = {row.worker_id for row in rows}
    assert ran_by <= set(worker_ids)
    assert len(ran_by) >= 2, "the workers did not compete for the jobs"


def test_a_killed_workers_job_waits_for_its_lease_then_runs_on_another(
    server: LiveServer, client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    pair = [LoggedWorker(server.data_dir, tmp_path / f"worker{i}.log") for i in range(2)]
    with ExitStack() as stack:
        for worker in pair:
            stack.enter_context(worker)
        wait_until_ready(pair)
        checkpoint = upload_raw(client, tiny.zip_stored, "lease").json()
        verification_id = checkpoint["verification"]["id"]
        held = wait_until_running(server, verification_id)
        doomed, survivor = sorted(pair, key=lambda w: w.ready_id() != held.worker_id)
        assert held.leased_until is not None
        doomed.kill()
        report = wait_for_report(client, verification_id)
    assert report["status"] == "passed", report
    (job,) = jobs_for(server, verification_id)
    assert (job.state, job.attempts) == (SUCCEEDED, 2)
    assert job.worker_id == survivor.ready_id() != held.worker_id
    # The survivor polled all along, yet took the job only once the dead worker's lease ran out.
    assert job.started_at is not None and job.started_at >= held.leased_until
    assert starts_per_job(pair) == {job.id: 2}


def _env(database: Database) -> dict[str, str]:
    return {"CKPT_DATABASE_URL": database.url}
