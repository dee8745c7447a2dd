"""Route classes that speak another API's error dialect.

Each wire format (TGI, OpenAI) has its own error shape. Routes of that format use one of these
classes, so every domain error and request-validation error they raise is translated in exactly
one place per format, as app.api.errors does for the registry's own routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse

from app.api.translating_route import TranslatingRoute
from app.errors import AppError

_TGI_ERROR_TYPES = {422: "validation", 424: "generation", 429: "overloaded"}


def tgi_error_body(exc: AppError) -> dict[str, str]:
    """TGI's error JSON: validation messages carry TGI's "Input validation error: " prefix."""
    error_type = _TGI_ERROR_TYPES.get(exc.status, exc.code)
    prefix = "Input validation error: " if error_type == "validation" else ""
    return {"error": prefix + exc.message, "error_type": error_type}


class TGIRoute(TranslatingRoute):
    """Errors as Text Generation Inference sends them: {"error", "error_type"}."""

    def render(self, exc: AppError, param: str | None) -> Response:
        return JSONResponse(tgi_error_body(exc), status_code=exc.status, headers=exc.headers)


def openai_error_body(exc: AppError, param: str | None = None) -> dict[str, Any]:
    if exc.status == 429:
        kind = "rate_limit_exceeded"
    else:
        kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    return {"error": {"message": exc.message, "type": kind, "param": param, "code": exc.code}}


class OpenAIRoute(TranslatingRoute):
    """Errors as OpenAI sends them: {"error": {"message", "type", "param", "code"}}."""

    def render(self, exc: AppError, param: str | None) -> Response:
        # OpenAI answers every invalid request with 400, never 422.
        status = 400 if exc.status == 422 else exc.status
        body = openai_error_body(exc, param)
        if param is not None:
            body["error"]["code"] = None
        return JSONResponse(body, status_code=status, headers=exc.headers)
