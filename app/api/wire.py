"""Route classes that speak another API's error dialect.

Each wire format (TGI, OpenAI) has its own error shape. Routes of that format use one of these
classes, so every domain error and request-validation error they raise is translated in exactly
one place per format, as app.api.errors does for the registry's own routes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from app.errors import AppError

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid"))


def tgi_error(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": error_type}, status_code=status)


_TGI_ERROR_TYPES = {422: "validation", 424: "generation", 429: "overloaded"}


def tgi_error_body(exc: AppError) -> dict[str, str]:
    """TGI's error JSON: validation messages carry TGI's "Input validation error: " prefix."""
    error_type = _TGI_ERROR_TYPES.get(exc.status, exc.code)
    prefix = "Input validation error: " if error_type == "validation" else ""
    return {"error": prefix + exc.message, "error_type": error_type}


class TGIRoute(APIRoute):
    """Errors as Text Generation Inference sends them: {"error", "error_type"}."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def translate(request: Request) -> Response:
            try:
                return await handler(request)
            except AppError as exc:
                return JSONResponse(tgi_error_body(exc), status_code=exc.status)
            except RequestValidationError as exc:
                return tgi_error(422, "validation", validation_message(exc))

        return translate


def openai_error(
    status: int, message: str, *, kind: str, code: str | None, param: str | None = None
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def openai_error_body(exc: AppError) -> dict[str, Any]:
    kind = _openai_kind(exc.status)
    return {"error": {"message": exc.message, "type": kind, "param": None, "code": exc.code}}


def _openai_kind(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    return "server_error" if status >= 500 else "invalid_request_error"


class OpenAIRoute(APIRoute):
    """Errors as OpenAI sends them: {"error": {"message", "type", "param", "code"}}."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def translate(request: Request) -> Response:
            try:
                return await handler(request)
            except AppError as exc:
                # OpenAI answers every invalid request with 400, never 422.
                status = 400 if exc.status == 422 else exc.status
                return JSONResponse(openai_error_body(exc), status_code=status)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
                return openai_error(
                    400,
                    validation_message(exc),
                    kind="invalid_request_error",
                    code=None,
                    param=param,
                )

        return translate
