"""Pure ASGI middleware (never BaseHTTPMiddleware: it must not buffer or break streams).

For every HTTP request: a request id (bound for the logs, echoed in `X-Request-ID`), one access
log line, and the request metrics. An exception that escapes the app before any response byte
becomes the usual 500 JSON error here, so that answer carries the id and is counted too.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_json
from app.observability import request_id
from app.observability.logs import ACCESS_LOGGER
from app.observability.metrics import UNMATCHED_ROUTE, HttpMetrics

log = logging.getLogger(__name__)
access_log = logging.getLogger(ACCESS_LOGGER)
CLIENT_CLOSED = 499  # no response was started: the client went away first (nginx's code)


class _Exchange:
    """One request/response as the middleware sees it."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]  # never the query string: it may carry secrets
        self.request_id = request_id.accept_or_generate(_header(scope, b"x-request-id"))
        self.started = time.perf_counter()
        self.status: int | None = None
        self.body_bytes = 0
        self._receive, self._send = receive, send

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.body_bytes += len(message.get("body", b""))
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            MutableHeaders(scope=message)[request_id.HEADER] = self.request_id
        await self._send(message)

    @property
    def route(self) -> str:
        route = self.scope.get("route")
        template: str | None = getattr(route, "path_format", None)
        return template or UNMATCHED_ROUTE


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(scope, receive, send)
        token = request_id.bind(exchange.request_id)
        self.metrics.in_progress.inc()
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception:
            if exchange.status is not None:
                raise  # mid-response: nothing can be answered any more
            log.exception("unhandled error on %s %s", exchange.method, exchange.path)
            await error_json(500, "internal_error", "internal server error")(
                scope, receive, exchange.send
            )
        finally:
            self.metrics.in_progress.dec()
            self._record(exchange)
            request_id.unbind(token)

    def _record(self, exchange: _Exchange) -> None:
        status = exchange.status if exchange.status is not None else CLIENT_CLOSED
        seconds = time.perf_counter() - exchange.started
        self.metrics.observe(exchange.method, exchange.route, status, seconds, exchange.body_bytes)
        duration_ms = round(seconds * 1000, 1)
        access_log.info(
            "%s %s %d %.1fms",
            exchange.method,
            exchange.path,
            status,
            duration_ms,
            extra={
                "method": exchange.method,
                "path": exchange.path,
                "status": status,
                "duration_ms": duration_ms,
            },
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
