"""`install_observability(app)` adds the middleware (call it after every other `add_middleware`, so
it wraps them and their answers get an id and are counted) and `GET /metrics`.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import disable_created_metrics

from app.observability.collectors import DatabaseCollector, GenerationCollector
from app.observability.metrics import AppMetrics
from app.observability.middleware import ObservabilityMiddleware
from app.observability.routes import router


def install_observability(app: FastAPI) -> AppMetrics:
    # No `*_created` series beside every counter and histogram (TGI exposes none either).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics = AppMetrics()
    metrics.registry.register(DatabaseCollector(app.state))
    metrics.registry.register(GenerationCollector(app.state))
    app.state.metrics = metrics
    app.add_middleware(ObservabilityMiddleware, metrics=metrics.http)
    app.include_router(router)
    return metrics
