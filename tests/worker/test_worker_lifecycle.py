"""Workers that die mid-job lose their lease; the job runs again elsewhere. SIGTERM is clean."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import select

from app.db.engine import Database
from app.db.models import Job
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.worker_process import WorkerProcess, checks_by_name, wait_for_report


def jobs_for(server: LiveServer, verification_id: str) -> list[Job]:
    db = Database(server.settings.resolved_database_url)
    with db.reading() as session:
        rows = list(session.scalars(select(Job).where(Job.subject_id == verification_id)))
    db.dispose()
    return rows


def wait_until_running(
    server: LiveServer, verification_id: str, attempt: int = 1, timeout: float = 60
) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = jobs_for(server, verification_id)
        if jobs and jobs[0].state == "running" and jobs[0].attempts == attempt:
            return jobs[0]
        time.sleep(0.02)
    raise TimeoutError("the job never started")


def test_killed_worker_job_is_rerun_by_another(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    checkpoint = upload_raw(client, tiny.zip_stored, "crashy").json()
    verification_id = checkpoint["verification"]["id"]
    doomed = WorkerProcess(server.data_dir).start()
    running = wait_until_running(server, verification_id)
    doomed.kill()
    assert running.attempts == 1
    with WorkerProcess(server.data_dir):
        report = wait_for_report(client, verification_id)
    assert report["status"] == "passed", report
    (job,) = jobs_for(server, verification_id)
    assert job.state == "succeeded"
    assert job.attempts == 2
    assert job.worker_id != running.worker_id


def test_job_fails_with_reason_after_max_attempts(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    # A GPT-2 job imports transformers in each fresh worker: seconds, time enough to kill it.
    checkpoint = upload_raw(client, tiny.zip_stored, "doomed").json()
    verification_id = checkpoint["verification"]["id"]
    for attempt in (1, 2, 3):  # the default max_attempts
        worker = WorkerProcess(server.data_dir).start()
        wait_until_running(server, verification_id, attempt)
        worker.kill()
    time.sleep(3.5)  # past the last lease
    with WorkerProcess(server.data_dir):
        report = wait_for_report(client, verification_id)
    assert report["status"] == "error"
    assert "stopped responding on all 3 attempts" in report["error"]
    (job,) = jobs_for(server, verification_id)
    assert job.state == "failed"


def test_sigterm_finishes_the_job_in_hand_then_exits(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    config = tiny.model.config.to_json_string()  # else n_head is assumed: inconclusive
    checkpoint = upload_raw(client, tiny.safetensors, "graceful", config=config).json()
    verification_id = checkpoint["verification"]["id"]
    worker = WorkerProcess(server.data_dir).start()
    wait_until_running(server, verification_id)
    assert worker.stop() == 0
    report = client.get(f"/v1/verifications/{verification_id}").json()
    assert report["status"] == "passed", report
    assert checks_by_name(report)["load"]["status"] == "passed"
