"""GET /health: 200 when the database answers and the data dir is writable."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request) -> JSONResponse:
    problems: list[str] = []
    try:
        with request.app.state.db.reading() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        problems.append(f"database: {exc.__class__.__name__}")
    tmp = request.app.state.store.tmp_dir
    if not (tmp.is_dir() and os.access(tmp, os.W_OK)):
        problems.append("data directory is not writable")
    status = 503 if problems else 200
    return JSONResponse(
        {"status": "ok" if not problems else "unhealthy", "problems": problems}, status_code=status
    )
