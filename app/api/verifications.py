"""Verifications: request one for a checkpoint, read reports as JSON or HTML."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from app.api.deps import VerificationsDep
from app.api.errors import error_responses
from app.services.verification_views import (
    VerificationList,
    VerificationRequest,
    VerificationView,
)
from app.ui.templating import render_report_html

router = APIRouter(tags=["verifications"])


@router.post(
    "/v1/checkpoints/{ref}/verifications",
    status_code=202,
    response_model=VerificationView,
    responses=error_responses(400, 404, 422),
)
def request_verification(
    ref: str, verifications: VerificationsDep, body: VerificationRequest | None = None
) -> JSONResponse:
    """Queue a verification; the worker reloads the checkpoint on its device and runs the checks."""
    view = verifications.request(ref, body or VerificationRequest())
    return JSONResponse(
        view.model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/v1/verifications/{view.id}"},
    )


@router.get(
    "/v1/checkpoints/{ref}/verifications",
    response_model=VerificationList,
    responses=error_responses(400, 404),
)
def list_verifications(ref: str, verifications: VerificationsDep) -> VerificationList:
    return verifications.list_for(ref)


@router.get(
    "/v1/verifications/{verification_id}",
    response_model=VerificationView,
    responses={200: {"content": {"text/html": {}}}, **error_responses(404)},
)
def get_verification(
    verification_id: str,
    request: Request,
    verifications: VerificationsDep,
    format: str | None = Query(None, pattern="^(json|html)$"),
) -> VerificationView | HTMLResponse:
    """The report as JSON, or as a page with `Accept: text/html` or `?format=html`."""
    view = verifications.get(verification_id)
    wants_html = format == "html" or (
        format is None and "text/html" in request.headers.get("accept", "")
    )
    if wants_html:
        return HTMLResponse(render_report_html(view.model_dump(mode="json")))
    return view
