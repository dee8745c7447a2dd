"""Scaling out on PostgreSQL: job claims with 1, 2, 4 workers; uploads with 1 and 2 API processes.

    .venv/bin/python bench/scale.py [--admin-url URL] [--jobs N] [--uploads N] [--clients N]

Every measurement gets a fresh database on the PostgreSQL server `--admin-url` names (created,
migrated and dropped by the bench) and a fresh data directory.

Jobs: `--jobs` empty (`noop`) jobs are queued, then N processes drain the queue, each running
the loop a worker runs for such a job (reap expired leases, claim with `FOR UPDATE SKIP LOCKED`,
mark it done); the claim's latency is timed around `JobQueue.claim`. The same queue drained by
N real `ckpt worker` processes (heartbeat thread, logging and all) is the last column, timed from
the table: first `started_at` to last `finished_at`.

Uploads: `--uploads` distinct GPT-2-shaped safetensors files (about 21 MB each) posted by
`--clients` concurrent clients to 1 or 2 `ckpt serve` processes sharing the database and the
data directory, requests spread round-robin over the processes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from itertools import cycle
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.db.scratch import ADMIN_URL, create_database, drop_database
from bench.common import markdown_table, running_server, running_workers
from bench.ingest import upload

WORKER_COUNTS = (1, 2, 4)
API_COUNTS = (1, 2)


@contextmanager
def fresh_migrated_database(label: str, admin_url: str) -> Iterator[str]:
    from app.db.migrate import upgrade

    url = create_database(f"bench_{label}", admin_url)
    try:
        upgrade(url)
        yield url
    finally:
        drop_database(url, admin_url)


def queue_noops(url: str, count: int) -> None:
    from app.db.engine import Database
    from app.db.models import new_id
    from app.jobs.queue import NOOP_JOB, enqueue

    db = Database(url)
    with db.transaction() as session:
        for _ in range(count):
            enqueue(session, NOOP_JOB, new_id())
    db.dispose()


def drain(url: str, start: Any, worker_id: str) -> list[float]:
    """Child process: the worker loop for noop jobs until the queue is empty; claim latencies."""
    from sqlalchemy import text

    from app.db.engine import Database
    from app.jobs.queue import JobQueue

    db = Database(url)
    queue = JobQueue(db, lease_seconds=30)
    with db.reading() as session:  # connect before the clock starts
        session.execute(text("SELECT 1"))
    start.wait()
    latencies = []
    while True:
        queue.reap_exhausted()
        began = time.perf_counter()
        job = queue.claim(worker_id)
        latencies.append(time.perf_counter() - began)
        if job is None:
            break
        queue.complete(job)
    db.dispose()
    return latencies


def claim_loop(url: str, processes: int, jobs: int) -> tuple[float, list[float]]:
    """(jobs per second, claim latencies) for `processes` processes draining `jobs` noops."""
    queue_noops(url, jobs)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Barrier(processes + 1)
        with context.Pool(processes) as pool:
            pending = [
                pool.apply_async(drain, (url, start, f"bench-{i}")) for i in range(processes)
            ]
            start.wait()
            began = time.perf_counter()
            latencies = [value for result in pending for value in result.get()]
            seconds = time.perf_counter() - began
    return jobs / seconds, latencies


def real_workers(url: str, processes: int, jobs: int, data_dir: Path) -> float:
    """Jobs per second of `processes` real `ckpt worker` processes draining `jobs` noops."""
    from sqlalchemy import func, select

    from app.db.engine import Database
    from app.db.models import Job
    from app.jobs.queue import SUCCEEDED

    env = {"CKPT_DATABASE_URL": url, "CKPT_WORKER_POLL_SECONDS": "0.05"}
    db = Database(url)
    with running_workers(data_dir, processes, **env):
        queue_noops(url, jobs)
        deadline = time.monotonic() + 600
        succeeded = select(func.count()).select_from(Job).where(Job.state == SUCCEEDED)
        while True:
            with db.reading() as session:
                if (session.scalar(succeeded) or 0) >= jobs:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{jobs} jobs did not finish in 600 s")
            time.sleep(0.1)
    with db.reading() as session:
        first, last = session.execute(
            select(func.min(Job.started_at), func.max(Job.finished_at))
        ).one()
    db.dispose()
    assert first is not None and last is not None, "the jobs left no timestamps"
    return jobs / (last - first).total_seconds()


def measure_claims(admin_url: str, jobs: int, work: Path) -> list[list[str]]:
    rows = []
    for processes in WORKER_COUNTS:
        with fresh_migrated_database(f"claims{processes}", admin_url) as url:
            rate, latencies = claim_loop(url, processes, jobs)
        with fresh_migrated_database(f"workers{processes}", admin_url) as url:
            data_dir = work / f"workers{processes}" / "data"
            real_rate = real_workers(url, processes, jobs, data_dir)
        ms = sorted(1000 * value for value in latencies)
        rows.append(
            [
                str(processes),
                str(jobs),
                f"{rate:.0f}",
                f"{statistics.median(ms):.2f}",
                f"{ms[int(0.99 * (len(ms) - 1))]:.2f}",
                f"{real_rate:.0f}",
            ]
        )
    return rows


def make_uploads(work: Path, count: int) -> list[Path]:
    """`count` safetensors files of one small GPT-2, each with a different first weight."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=4,
        n_embd=256,
        n_head=4,
        vocab_size=8192,
        n_positions=256,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2LMHeadModel(config).save_pretrained(work / "base")
    base = (work / "base" / "model.safetensors").read_bytes()
    data_start = 8 + int.from_bytes(base[:8], "little")
    paths = []
    for index in range(count):
        variant = bytearray(base)
        variant[data_start : data_start + 4] = (index + 1).to_bytes(4, "little")  # a tiny float
        path = work / f"upload-{index}.safetensors"
        path.write_bytes(variant)
        paths.append(path)
    return paths


def upload_all(urls: list[str], files: list[Path], clients: int, tag: str) -> float:
    targets = cycle(urls)
    jobs = [(next(targets), path, f"{tag}-{i}") for i, path in enumerate(files)]
    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda job: upload(*job), jobs))
    return time.perf_counter() - began


def measure_uploads(admin_url: str, files: list[Path], clients: int, work: Path) -> list[list[str]]:
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    rows = []
    for processes in API_COUNTS:
        data_dir = work / f"api{processes}" / "data"
        with fresh_migrated_database(f"api{processes}", admin_url) as url, ExitStack() as stack:
            env = {"CKPT_DATABASE_URL": url, "CKPT_EMBEDDED_WORKER": "false"}
            urls = [
                stack.enter_context(running_server(data_dir, **env))[0] for _ in range(processes)
            ]
            for target in urls:  # imports, first-touch allocations
                upload(target, files[0], f"warmup-{target.rsplit(':', 1)[1]}")
            seconds = upload_all(urls, files[1:], clients, f"api{processes}")
        count = len(files) - 1
        total = megabytes * count / len(files)
        rows.append(
            [
                str(processes),
                str(clients),
                f"{count} x {megabytes / len(files):.0f} MB",
                f"{seconds:.2f}",
                f"{total / seconds:.0f}",
                f"{count / seconds:.1f}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=ADMIN_URL, help="PostgreSQL to create DBs on")
    parser.add_argument("--jobs", type=int, default=2000, help="noop jobs per measurement")
    parser.add_argument("--uploads", type=int, default=40, help="uploads per measurement")
    parser.add_argument("--clients", type=int, default=4, help="concurrent upload clients")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        claims = measure_claims(args.admin_url, args.jobs, work)
        files = make_uploads(work, args.uploads + 1)
        uploads = measure_uploads(args.admin_url, files, args.clients, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        markdown_table(
            [
                "worker processes",
                "noop jobs",
                "claim loop: jobs/s",
                "claim p50 ms",
                "claim p99 ms",
                "real `ckpt worker`s: jobs/s",
            ],
            claims,
        )
    )
    print()
    print(
        markdown_table(
            ["API processes", "clients", "uploads", "seconds", "MB/s", "uploads/s"], uploads
        )
    )


if __name__ == "__main__":
    main()
