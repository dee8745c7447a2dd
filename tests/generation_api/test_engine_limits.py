"""Queue limits, cold loads and disconnects, seen through the HTTP API."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer

SERVER_SETTINGS = {"max_queue": 2, "max_batch": 1}


def engine_of(server: LiveServer):  # type: ignore[no-untyped-def]
    return server.app.state.generation.engine


def test_cold_model_requested_by_ten_clients_loads_once(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    checkpoint = upload_raw(client, tiny.zip_stored, "cold").json()

    async def ten() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            calls = [
                http.post(
                    "/models/cold/generate",
                    json={"inputs": "hello", "parameters": {"max_new_tokens": 2}},
                )
                for _ in range(10)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    statuses = asyncio.run(ten())
    assert engine_of(server).cache.loads[checkpoint["id"]] == 1
    assert set(statuses) <= {200, 429}
    assert 200 in statuses


def test_full_queue_answers_429_in_both_dialects(server: LiveServer, tiny: TinyModel) -> None:
    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            body = {"inputs": "hello", "parameters": {"max_new_tokens": 40}}
            calls = [http.post("/models/cold/generate", json=body) for _ in range(8)]
            calls.append(
                http.post(
                    "/v1/completions", json={"model": "cold", "prompt": "hi", "max_tokens": 40}
                )
            )
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 429 in statuses
    tgi_rejected = next(r for r in responses[:-1] if r.status_code == 429)
    assert tgi_rejected.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
    if responses[-1].status_code == 429:
        assert responses[-1].json()["error"]["type"] == "rate_limit_exceeded"


def test_disconnected_stream_stops_costing_compute(server: LiveServer) -> None:
    engine = engine_of(server)
    body = b'{"inputs": "hello", "parameters": {"max_new_tokens": 60}}'
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /models/cold/generate_stream HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        sock.recv(4096)  # the first event: generation is running
    deadline = time.monotonic() + 20
    while engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.stats().running == 0
    steps = engine.stats().decode_steps
    time.sleep(0.5)
    assert engine.stats().decode_steps == steps
