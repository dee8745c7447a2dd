"""X-Request-ID on every answer (errors and streams included), in every log line of the request,
and streams passing through the middleware unbuffered."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest
from fastapi.responses import StreamingResponse

from app.observability.logs import ACCESS_LOGGER, RequestIdFilter
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer

GENERATED = re.compile(r"[0-9a-f]{32}")
release_stream = threading.Event()
route_log = logging.getLogger("tests.observability.route")


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(RequestIdFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def of(self, request_id: str, count: int) -> list[logging.LogRecord]:
        """The request's records once there are `count` (the access line is written after the
        last body byte is sent, so it may trail the client's read a little)."""
        deadline = time.monotonic() + 10
        while True:
            found = [r for r in self.records if getattr(r, "request_id", None) == request_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.01)


@pytest.fixture(scope="module")
def routes(server: LiveServer) -> LiveServer:
    """Routes only these tests need: one that fails, one that logs, one stream held open."""

    def boom() -> None:
        raise RuntimeError("a bug in a route")

    def logs_in_a_thread() -> dict[str, str]:
        route_log.warning("inside a sync route (threadpool)")
        return {"ok": "yes"}

    async def held_stream() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            route_log.warning("inside a stream")
            yield b"data: first\n\n"
            deadline = time.monotonic() + 30
            while not release_stream.is_set() and time.monotonic() < deadline:
                await anyio.sleep(0.01)
            yield b"data: second\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    server.app.add_api_route("/test/boom", boom)
    server.app.add_api_route("/test/logs", logs_in_a_thread)
    server.app.add_api_route("/test/held-stream", held_stream)
    return server


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(previous)


def test_a_sane_incoming_id_is_echoed(client: httpx.Client) -> None:
    for given in ("abc-123", "trace.2026_11_23-x", "A" * 128):
        response = client.get("/health", headers={"X-Request-ID": given})
        assert response.headers["X-Request-ID"] == given


def test_an_id_is_generated_when_missing_or_insane(client: httpx.Client) -> None:
    seen = set()
    insane = (b"", b"A" * 129, b"has space", b"a;b", b"x\\ny", "é".encode())
    for given in (None, *insane):
        headers = [] if given is None else [(b"X-Request-ID", given)]
        echoed = client.get("/health", headers=headers).headers["X-Request-ID"]
        assert GENERATED.fullmatch(echoed), (given, echoed)
        seen.add(echoed)
    assert len(seen) == 7  # a fresh one each time


def test_error_answers_carry_the_id(routes: LiveServer, client: httpx.Client) -> None:
    not_found = client.get("/v1/checkpoints/nope", headers={"X-Request-ID": "err-404"})
    assert not_found.status_code == 404
    assert not_found.headers["X-Request-ID"] == "err-404"
    invalid = client.get("/v1/checkpoints", params={"limit": "many"})
    assert invalid.status_code == 422 and GENERATED.fullmatch(invalid.headers["X-Request-ID"])


def test_an_unhandled_exception_is_a_500_with_the_id_and_a_logged_traceback(
    routes: LiveServer, client: httpx.Client, captured: Captured
) -> None:
    response = client.get("/test/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.json() == {
        "error": {"code": "internal_error", "message": "internal server error"}
    }
    assert response.headers["X-Request-ID"] == "boom-1"
    (error, access) = captured.of("boom-1", 2)
    assert error.levelno == logging.ERROR and error.exc_info is not None
    assert "a bug in a route" in str(error.exc_info[1])
    assert access.name == ACCESS_LOGGER and access.__dict__["status"] == 500


def test_every_log_line_of_a_request_carries_its_id(
    routes: LiveServer, client: httpx.Client, captured: Captured
) -> None:
    secret = "Bearer never-logged-7d1e"
    client.get("/test/logs", headers={"X-Request-ID": "logged-1", "Authorization": secret})
    inside, access = captured.of("logged-1", 2)
    assert inside.getMessage() == "inside a sync route (threadpool)"
    assert access.name == ACCESS_LOGGER
    assert access.__dict__["method"] == "GET"
    assert access.__dict__["path"] == "/test/logs"
    assert access.__dict__["status"] == 200
    assert access.__dict__["duration_ms"] >= 0
    assert all("never-logged" not in str(r.__dict__) for r in captured.records)


def test_a_stream_is_sent_as_it_is_produced(
    routes: LiveServer, client: httpx.Client, captured: Captured
) -> None:
    """The second event waits for the test: a middleware that buffered the body would never
    deliver the first one, and this read would time out."""
    release_stream.clear()
    with client.stream(
        "GET", "/test/held-stream", headers={"X-Request-ID": "sse-1"}, timeout=10
    ) as response:
        assert response.headers["X-Request-ID"] == "sse-1"
        lines = response.iter_lines()
        assert next(lines) == "data: first"
        release_stream.set()
        assert [line for line in lines if line] == ["data: second"]
    inside, access = captured.of("sse-1", 2)
    assert inside.getMessage() == "inside a stream"
    assert access.__dict__["status"] == 200


def test_a_generation_stream_carries_the_id(client: httpx.Client, tiny: TinyModel) -> None:
    assert upload_raw(client, tiny.zip_stored, "streamer").status_code == 201
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 5}}
    with client.stream(
        "POST", "/models/streamer/generate_stream", json=body, headers={"X-Request-ID": "gen-1"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["X-Request-ID"] == "gen-1"
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(events) == 5
