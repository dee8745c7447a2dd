"""Metrics read at scrape time: the database's checkpoints and jobs, the generation engine.

Reading them when Prometheus asks (instead of counting events) keeps them right across
restarts and across processes: jobs are finished by worker processes, not by this one. A scrape
costs two indexed counts and the job-duration buckets' few rows (app.jobs.durations), however
many jobs ever ran.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from app.db.engine import Database
from app.db.models import Checkpoint, Job
from app.jobs.durations import Histogram, read_histograms
from app.jobs.queue import FAILED, QUEUED, RUNNING, SUCCEEDED
from app.services.verifications import VERIFY_JOB

log = logging.getLogger(__name__)

JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED)


class DatabaseCollector(Collector):
    """Checkpoints, jobs by kind and state, finished jobs' durations."""

    def __init__(self, state: Any) -> None:
        self._state = state  # app.state: the database exists only while the lifespan runs

    def collect(self) -> Iterator[Metric]:
        db: Database | None = getattr(self._state, "db", None)
        if db is None:
            return
        try:
            with db.reading() as session:
                checkpoints = session.scalar(select(func.count()).select_from(Checkpoint))
                jobs = session.execute(
                    select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
                ).all()
                durations = read_histograms(session)
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable (%s)", exc.__class__.__name__)
            return
        yield _checkpoints_family(checkpoints or 0)
        yield _jobs_family(jobs)
        yield _job_duration_family(durations)


def _checkpoints_family(count: int) -> Metric:
    # Every stored checkpoint is ready (rows are written once inspected): one series, kept
    # labelled for the pending/failed states resumable uploads will bring.
    family = GaugeMetricFamily(
        "ckpt_checkpoints", "Stored checkpoints, by status (all ready).", labels=["status"]
    )
    family.add_metric(["ready"], count)
    return family


def _jobs_family(rows: Any) -> Metric:
    counts: dict[tuple[str, str], int] = {(VERIFY_JOB, state): 0 for state in JOB_STATES}
    for kind, state, count in rows:
        counts[(kind, state)] = count
    family = GaugeMetricFamily("ckpt_jobs", "Jobs, by kind and state.", labels=["kind", "state"])
    for (kind, state), count in sorted(counts.items()):
        family.add_metric([kind, state], count)
    return family


def _job_duration_family(histograms: dict[tuple[str, str], Histogram]) -> Metric:
    family = HistogramMetricFamily(
        "ckpt_job_duration_seconds",
        "Finished jobs' run time (the last attempt's), by kind and final state; counted as "
        "jobs finish, so pruning the jobs table leaves it alone.",
        labels=["kind", "state"],
    )
    for (kind, state), histogram in sorted(histograms.items()):
        family.add_metric([kind, state], histogram.buckets, sum_value=histogram.total_seconds)
    return family


class GenerationCollector(Collector):
    """The engine's counters and queue, and the model cache, read when scraped."""

    def __init__(self, state: Any) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        generation = getattr(self._state, "generation", None)
        if generation is None:
            return
        engine = generation.engine
        stats = engine.stats()
        yield _counter("ckpt_generation_tokens", "Tokens generated.", stats.generated_tokens)
        yield _counter("ckpt_generation_prefills", "Prompts prefilled.", stats.prefills)
        yield _counter("ckpt_generation_decode_steps", "Batched decode steps.", stats.decode_steps)
        yield _gauge(
            "ckpt_generation_queue_depth",
            "Requests accepted and waiting for their prefill (bounded by CKPT_MAX_QUEUE).",
            stats.waiting,
        )
        yield _gauge("ckpt_generation_running", "Sequences generating now.", stats.running)
        yield from _cache_families(engine.cache)


def _cache_families(cache: Any) -> Iterator[Metric]:
    yield _counter("ckpt_model_cache_hits", "Model lookups that found it loaded.", cache.hits)
    yield _counter(
        "ckpt_model_cache_misses",
        "Model lookups that had to load it (or wait for its load).",
        cache.misses,
    )
    yield _counter("ckpt_model_cache_loads", "Model loads started.", sum(cache.loads.values()))
    yield _gauge("ckpt_model_cache_bytes", "Parameters of loaded models.", cache.resident_bytes)
    yield _gauge("ckpt_model_cache_budget_bytes", "CKPT_MODEL_CACHE_BYTES.", cache.budget_bytes)
    yield _gauge("ckpt_model_cache_models", "Models loaded.", len(cache.resident()))


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)
