"""`ckpt serve` with CKPT_LIMIT_CONCURRENCY: connections beyond the limit get 503 at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from app.db.migrate import upgrade
from tests.live_server import free_port
from tests.worker_process import ROOT

LIMIT = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    data = tmp_path_factory.mktemp("limited") / "data"
    port = free_port()
    env = {
        **os.environ,
        "CKPT_DATA_DIR": str(data),
        "CKPT_PORT": str(port),
        "CKPT_EMBEDDED_WORKER": "false",
        "CKPT_LIMIT_CONCURRENCY": str(LIMIT),
    }
    data.mkdir(parents=True)
    upgrade(f"sqlite:///{data / 'registry.sqlite3'}")  # what `ckpt migrate` does, in-process
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            assert process.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield url, port, data
    finally:
        process.terminate()
        process.wait(timeout=30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow  # starts a real `ckpt serve` process (its imports take a few seconds)
def test_connections_beyond_the_limit_get_503(served: tuple[str, int, Path]) -> None:
    import socket

    url, port, data = served
    assert httpx.get(f"{url}/health").status_code == 200
    with ExitStack() as stack:
        for _ in range(LIMIT - 1):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port)))
            sock.sendall(
                b"POST /v1/checkpoints?name=slow HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
                + b"\0"
                * 1000
            )
        time.sleep(0.3)
        assert httpx.get(f"{url}/health").status_code == 503
    deadline = time.monotonic() + 10
    while not _healthy(url):
        assert time.monotonic() < deadline, "the server did not recover after the clients left"
        time.sleep(0.1)
    assert list((data / "tmp").iterdir()) == []
