"""The database part of a /metrics scrape with many finished jobs in the table.

    .venv/bin/python bench/metrics_scrape.py [--jobs 100000] [--database-url URL] [--scrapes 20]

Migrates a fresh database (a temporary SQLite file unless `--database-url` names an empty one),
inserts `--jobs` finished jobs in bulk with their duration buckets, as `JobQueue.finish` would
have counted them, then renders the app's DatabaseCollector (checkpoints, jobs by kind and
state, the job-duration histogram) `--scrapes` times and prints the median and worst time.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import insert

from app.db.engine import Database
from app.db.migrate import upgrade
from app.db.models import Job, JobDurationBucket, new_id, utcnow
from app.jobs.durations import bucket_label
from app.jobs.queue import FAILED, SUCCEEDED
from app.observability.collectors import DatabaseCollector
from app.services.verifications import VERIFY_JOB

BATCH = 10_000


def fill(db: Database, jobs: int) -> None:
    rng = random.Random(0)
    now = utcnow()
    counts: Counter[tuple[str, str, str]] = Counter()
    seconds: dict[tuple[str, str, str], float] = {}
    for start in range(0, jobs, BATCH):
        rows = []
        for _ in range(min(BATCH, jobs - start)):
            ran = rng.expovariate(1 / 20)
            state = FAILED if rng.random() < 0.05 else SUCCEEDED
            finished = now - timedelta(seconds=rng.uniform(0, 86_400))
            rows.append(
                {
                    "id": new_id(),
                    "kind": VERIFY_JOB,
                    "subject_id": new_id(),
                    "state": state,
                    "attempts": 1,
                    "max_attempts": 3,
                    "created_at": finished - timedelta(seconds=ran),
                    "started_at": finished - timedelta(seconds=ran),
                    "finished_at": finished,
                }
            )
            key = (VERIFY_JOB, state, bucket_label(ran))
            counts[key] += 1
            seconds[key] = seconds.get(key, 0.0) + ran
        with db.transaction() as session:
            session.execute(insert(Job), rows)
    with db.transaction() as session:
        session.execute(
            insert(JobDurationBucket),
            [
                {"kind": k, "state": s, "le": le, "jobs": n, "seconds": seconds[(k, s, le)]}
                for (k, s, le), n in counts.items()
            ],
        )


def time_scrapes(db: Database, scrapes: int) -> list[float]:
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(SimpleNamespace(db=db)))
    generate_latest(registry)  # warm: connection pool, statement cache
    timings = []
    for _ in range(scrapes):
        started = time.perf_counter()
        text = generate_latest(registry)
        timings.append(time.perf_counter() - started)
    assert b"ckpt_job_duration_seconds_bucket" in text
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'registry.sqlite3'}"
        upgrade(url)
        db = Database(url)
        try:
            fill(db, args.jobs)
            timings = time_scrapes(db, args.scrapes)
        finally:
            db.dispose()
    print(f"{db.engine.dialect.name}, {args.jobs:,} finished jobs, {args.scrapes} scrapes")
    print(f"median {statistics.median(timings) * 1000:.1f} ms, worst {max(timings) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
