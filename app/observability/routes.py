"""GET /metrics: Prometheus text format. Deliberately outside any auth dependency (scrapers)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.observability.metrics import AppMetrics

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Sync on purpose: the scrape-time collectors query the database (run in the threadpool)."""
    app_metrics: AppMetrics = request.app.state.metrics
    return Response(app_metrics.render(), media_type=CONTENT_TYPE_LATEST)
