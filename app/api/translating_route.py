"""The base route class for routes that render errors in their own format.

A subclass implements `render`; every domain error and request-validation error its handlers raise
goes through it, in one place per format. The wire formats (app.api.wire) and the UI's pages
(app.ui.pages) build on it, as app.api.errors does for the registry's own JSON routes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from app.errors import AppError, UnprocessableRequest

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _first_error(exc: RequestValidationError) -> tuple[str | None, str]:
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    message = str(first.get("msg", "invalid"))
    return param, f"{param}: {message}" if param else message


class TranslatingRoute(APIRoute):
    """Runs the handler and renders any AppError (request-validation errors become one)."""

    def render(self, exc: AppError, param: str | None) -> Response:
        raise NotImplementedError

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def translate(request: Request) -> Response:
            try:
                return await handler(request)
            except AppError as exc:
                return self.render(exc, None)
            except RequestValidationError as exc:
                param, message = _first_error(exc)
                return self.render(UnprocessableRequest(message), param)

        return translate
