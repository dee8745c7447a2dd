"""`ckpt worker`: claim a job, run it while heartbeating its lease, repeat until told to stop.

SIGTERM/SIGINT finish the job in hand, then exit. A worker that dies instead (SIGKILL, OOM)
stops heartbeating; its lease expires and another worker runs the job again. Every
CKPT_JOB_PRUNE_SECONDS it also deletes finished jobs past their retention, and the materialised
folders of deleted checkpoints.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType

from sqlalchemy.orm import Session

from app.config import Settings
from app.db.engine import Database
from app.db.migrate import schema_problem
from app.jobs.queue import NOOP_JOB, ClaimedJob, ExhaustedJob, JobQueue, LeaseLost, Retention
from app.services.eviction import sweep_deleted_folders
from app.storage.factory import open_blob_store
from app.worker.device import describe_device, resolve_device
from app.worker.verify_job import VerifyJobRunner

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, settings: Settings, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.db = Database(settings.resolved_database_url)
        problem = schema_problem(self.db.engine, self.db.url)
        if problem:
            raise SystemExit(f"ckpt worker: {problem}")
        self.store = open_blob_store(settings)
        self.store.prepare()
        self.queue = JobQueue(self.db, settings.job_lease_seconds)
        self.device = resolve_device(settings.device)
        cache = settings.data_dir / "cache" / "checkpoints"
        cache.mkdir(parents=True, exist_ok=True)
        self.folders = cache
        self.verify = VerifyJobRunner(
            self.db,
            self.store,
            self.queue,
            self.device,
            cache,
            settings.ingest_limits,
            max_folders=settings.model_folder_cache_entries,
        )
        self.stop = threading.Event()
        self.retention = Retention(settings.job_retention_seconds, settings.job_retention_count)
        self._next_prune = time.monotonic()

    def run(self) -> None:
        log.info("worker %s on %s", self.worker_id, describe_device(self.device))
        while not self.stop.is_set():
            try:
                self._reap()
                self._prune_when_due()
                job = self.queue.claim(self.worker_id)
            except Exception:  # the database may be briefly unavailable: back off, retry
                log.exception("claiming a job failed")
                self.stop.wait(5 * self.settings.worker_poll_seconds)
                continue
            if job is None:
                self.stop.wait(self.settings.worker_poll_seconds)
                continue
            self._run(job)
        self.db.dispose()

    def _reap(self) -> None:
        for exhausted in self.queue.reap_exhausted(self._fail_subject):
            log.warning("job %s failed: %s", exhausted.id, exhausted.error)

    def _fail_subject(self, session: Session, exhausted: ExhaustedJob) -> None:
        self.verify.fail(session, exhausted.subject_id, exhausted.error)

    def _prune_when_due(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + self.settings.job_prune_seconds
        deleted = self.queue.prune(self.retention)
        if deleted:
            log.info("pruned %d finished jobs past their retention", deleted)
        # Folders a deletion left because a running job used them (app.services.eviction).
        sweep_deleted_folders(self.db, self.folders)

    def _run(self, job: ClaimedJob) -> None:
        log.info("running %s job %s (attempt %d)", job.kind, job.id, job.attempt)
        beating = threading.Event()
        heart = threading.Thread(target=self._heartbeat, args=(job, beating), daemon=True)
        heart.start()
        try:
            if job.kind == NOOP_JOB:
                self.queue.complete(job)
            else:
                self.verify.run(job)
        except LeaseLost:
            log.warning("lost the lease on job %s; another worker has it", job.id)
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self._record_failure(job, f"{type(exc).__name__}: {exc}")
        finally:
            beating.set()
            heart.join()

    def _record_failure(self, job: ClaimedJob, error: str) -> None:
        try:
            with self.db.transaction() as session:
                self.queue.finish(session, job, error=error)
                self.verify.fail(session, job.subject_id, error)
        except LeaseLost:
            log.warning("lost the lease on job %s while recording its failure", job.id)

    def _heartbeat(self, job: ClaimedJob, done: threading.Event) -> None:
        interval = self.settings.job_lease_seconds / 3
        while not done.wait(interval):
            try:
                self.queue.heartbeat(job)
            except LeaseLost:
                log.warning("job %s: lease lost", job.id)
                return
            except Exception:  # a transient database error must not kill the heartbeat
                log.exception("heartbeat for job %s failed", job.id)

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: finishing the current job, then stopping", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)


def run_worker(settings: Settings) -> int:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    worker = Worker(settings)
    worker.install_signal_handlers()
    worker.run()
    return 0
