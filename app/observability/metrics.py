"""The app's Prometheus metrics, in a registry of its own (several apps share a test process).

Observed as things happen: HTTP requests (by route template, never the raw path), upload bytes,
generation timings. Read at scrape time (collectors.py): checkpoints and jobs from the database,
the generation engine's counters and the model cache.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:  # app.generation imports torch
    from app.generation import FinishEvent, GenerationEngine

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
INGEST_ROUTE = ("POST", "/v1/checkpoints")
UNMATCHED_ROUTE = "unmatched"  # one label for every path no route matched (scanners, typos)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "ckpt_http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "ckpt_http_request_duration_seconds",
            "From the request's arrival to its last response byte (streams included).",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "ckpt_http_requests_in_progress",
            "Requests being handled now (open streams included).",
            registry=registry,
        )
        self.ingest_bytes = Counter(
            "ckpt_ingest_bytes_total",
            "Upload request body bytes received by POST /v1/checkpoints, by outcome: "
            "created (201), duplicate (200, same bytes already stored) or rejected.",
            ["outcome"],
            registry=registry,
        )

    def observe(
        self, method: str, route: str, status: int, seconds: float, body_bytes: int
    ) -> None:
        method = method if method in METHODS else "OTHER"
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)
        if (method, route) == INGEST_ROUTE:
            self.ingest_bytes.labels(_ingest_outcome(status)).inc(body_bytes)


def _ingest_outcome(status: int) -> str:
    return {201: "created", 200: "duplicate"}.get(status, "rejected")


class GenerationMetrics:
    """Observed from each finished generation a client read to its end."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.finished = Counter(
            "ckpt_generation_requests_total",
            "Generations finished, by finish reason.",
            ["finish_reason"],
            registry=registry,
        )
        self.time_per_token = Histogram(
            "ckpt_generation_time_per_token_seconds",
            "Inference time (prefill start to finish) divided by generated tokens.",
            buckets=PER_TOKEN_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            "ckpt_generation_first_token_seconds",
            "Accepted to first token (queue, cold model load and prefill included).",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.queue = Histogram(
            "ckpt_generation_queue_seconds",
            "Accepted to prefill start (includes loading a cold model).",
            buckets=WAIT_BUCKETS,
            registry=registry,
        )

    def observe(self, finish: FinishEvent) -> None:
        self.finished.labels(finish.finish_reason).inc()
        self.time_per_token.observe(finish.timings.time_per_token)
        self.first_token.observe(finish.timings.first_token)
        self.queue.observe(finish.timings.queue)


class AppMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.http = HttpMetrics(self.registry)
        self.generation = GenerationMetrics(self.registry)

    def watch_generation(self, engine: GenerationEngine) -> None:
        engine.finish_listeners.append(self.generation.observe)

    def render(self) -> bytes:
        return generate_latest(self.registry)
