"""Worker processes whose logs a test reads, and jobs put straight into the queue."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select

from app.db.engine import Database
from app.db.models import Job, new_id
from app.jobs.queue import NOOP_JOB, SUCCEEDED, enqueue
from tests.worker_process import ROOT, WorkerProcess

_READY = re.compile(r"worker (\S+) on ")
_RAN = re.compile(r"running (\w+) job ([0-9a-f]{32}) \(attempt (\d+)\)")


class LoggedWorker(WorkerProcess):
    """A real `ckpt worker` whose log (stderr) goes to a file the test reads."""

    def __init__(self, data_dir: Path, log: Path, **env: str) -> None:
        super().__init__(data_dir, **env)
        self.log = log

    def start(self) -> LoggedWorker:
        with self.log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker"],
                env=self.env,
                cwd=ROOT,
                stderr=sink,
            )
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready_id(self) -> str | None:
        """The worker's id once it polls the queue (it logs it when its loop starts)."""
        found = _READY.search(self.text())
        return found.group(1) if found else None

    def jobs_started(self) -> list[str]:
        """Ids of the jobs this worker started, once per start, as its log records them."""
        return [match.group(2) for match in _RAN.finditer(self.text())]


def wait_until_ready(workers: list[LoggedWorker], timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ids = [worker.ready_id() for worker in workers]
        if all(ids):
            return [worker_id for worker_id in ids if worker_id]
        for worker in workers:
            assert worker.process is not None and worker.process.poll() is None, worker.text()
        time.sleep(0.1)
    raise TimeoutError("the workers did not start polling")


def enqueue_noops(db: Database, count: int) -> list[str]:
    with db.transaction() as session:
        jobs = [enqueue(session, NOOP_JOB, new_id()) for _ in range(count)]
        session.flush()
        return [job.id for job in jobs]


def wait_until_succeeded(db: Database, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        with db.reading() as session:
            query = select(func.count()).select_from(Job).where(Job.state == SUCCEEDED)
            done = session.scalar(query) or 0
        if done >= count:
            return
        time.sleep(0.1)
    raise TimeoutError(f"only {done} of {count} jobs succeeded in {timeout} s")


def starts_per_job(workers: list[LoggedWorker]) -> Counter[str]:
    return Counter(job_id for worker in workers for job_id in worker.jobs_started())
