"""Slow work does not starve the API: uploads being received or loaded in the torch sandbox, and
long prompts being tokenized, leave /health, reads, downloads and generation answering.

The server's default thread pool (anyio's, 40 threads in production) is cut to as many threads
as the test keeps uploads in ingest: code that ingested on it would freeze every sync route and
key check here, as 40 uploads freeze a production server.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.auth.keys import CreatedKey
from tests.api.test_upload import upload_raw
from tests.auth.helpers import bearer, create_key
from tests.conftest import TinyModel, leftover_temp_files
from tests.hostile.builders import torch_bytes
from tests.ingest.sandbox import loader_children, slow_torch_bytes
from tests.live_server import LiveServer
from tests.models import CORPUS

SLOW_TORCH_UPLOADS = 4
THROTTLED_UPLOADS = 4
LIGHT_ROUTE_SECONDS = 1.0
HEALTH_DELAY_SECONDS = 0.050
PROMPT_CHARS = 250_000
# Unpickling 30,000 tensor views of one storage takes the sandbox a few seconds (3 MB file).
SLOW_TENSORS = 30_000


class SmallDefaultPool:
    """ASGI wrapper: the server's event loop gets a default thread pool of `threads` threads."""

    def __init__(self, app: Any, threads: int) -> None:
        self.app = app
        self.threads = threads

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
        await self.app(scope, receive, send)


@dataclass
class AuthServer:
    live: LiveServer
    key: CreatedKey

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.live.url, timeout=120, headers=bearer(self.key.key))


def small_pool_server(data_dir: Path, default_pool_threads: int, **settings: Any) -> LiveServer:
    live = LiveServer(data_dir, **settings)
    live.server.config.app = SmallDefaultPool(live.app, default_pool_threads)
    return live


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    live = small_pool_server(
        tmp_path_factory.mktemp("slow_work") / "data",
        default_pool_threads=SLOW_TORCH_UPLOADS,
        ingest_threads=8,
        max_torch_loaders=2,
        torch_loader_wait_seconds=300,
    )
    key = create_key(live.settings, "slow-work", "write")  # before start: keys required
    with live:
        yield AuthServer(live, key)


@pytest.fixture(scope="module")
def busy_client(busy_server: AuthServer) -> Iterator[httpx.Client]:
    with busy_server.client() as http:
        yield http


@pytest.fixture(scope="module")
def tiny_id(busy_client: httpx.Client, tiny: TinyModel) -> str:
    response = upload_raw(busy_client, tiny.zip_stored, "tiny")
    assert response.status_code == 201, response.text
    generated = generate(busy_client, "tiny", "hello")  # loads the model before any timing
    assert generated.status_code == 200, generated.text
    identifier: str = response.json()["id"]
    return identifier


@pytest.fixture(scope="module")
def slow_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Distinct files, each slow to unpickle."""
    root = tmp_path_factory.mktemp("slow_checkpoints")
    paths = []
    for index in range(SLOW_TORCH_UPLOADS):
        path = root / f"slow-{index}.pt"
        path.write_bytes(slow_torch_bytes(SLOW_TENSORS, stamp=index))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def quick_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("quick") / "quick.pt"
    path.write_bytes(torch_bytes({"w": torch.arange(6, dtype=torch.float32)}))
    return path


def generate(client: httpx.Client, ref: str, prompt: str) -> httpx.Response:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 2}}
    return client.post(f"/models/{ref}/generate", json=body)


# --- watching the sandbox ------------------------------------------------------------------------


def running_loaders() -> int:
    """Sandboxed torch loaders started by the server (it runs in this process)."""
    return len(loader_children(os.getpid()))


class LoaderWatch:
    """The most sandboxed loaders seen running at once, sampled every 10 ms."""

    def __init__(self) -> None:
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> LoaderWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.most = max(self.most, running_loaders())


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


# --- throttled bodies ------------------------------------------------------------------------


class ThrottledUploads:
    """Raw-socket uploads that send 4 KiB every 100 ms (above the minimum rate) until closed."""

    def __init__(self, server: AuthServer, count: int) -> None:
        self.server = server
        self.sockets = [self._open(index) for index in range(count)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _open(self, index: int) -> socket.socket:
        port = self.server.live.port
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = (
            f"POST /v1/checkpoints?name=throttled-{index} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {self.server.key.key}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {64 << 20}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"PK\x03\x04")
        return sock

    def _trickle(self) -> None:
        chunk = bytes(4096)
        while not self._stop.wait(0.1):
            for sock in self.sockets:
                sock.sendall(chunk)

    def still_open(self) -> bool:
        """No answer yet on any socket: every upload is still being received."""
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                sock.recv(1, socket.MSG_PEEK)  # an answer, or the server closed it
                return False
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
        return self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.sockets:
            sock.close()


# --- the tests -----------------------------------------------------------------------------------


def timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started_at = time.perf_counter()
    response = call()
    return time.perf_counter() - started_at, response


def light_route_probes(
    client: httpx.Client, tiny_id: str
) -> dict[str, Callable[[], httpx.Response]]:
    return {
        "health": lambda: client.get("/health"),
        "list": lambda: client.get("/v1/checkpoints", params={"limit": 5}),
        "download": lambda: client.get(f"/v1/checkpoints/{tiny_id}/download"),
        "generate": lambda: generate(client, "tiny", "hello"),
    }


def test_light_routes_answer_while_uploads_are_received_and_loaded(
    busy_server: AuthServer,
    busy_client: httpx.Client,
    tiny_id: str,
    slow_checkpoints: list[Path],
    quick_checkpoint: Path,
) -> None:
    throttled = ThrottledUploads(busy_server, THROTTLED_UPLOADS)
    uploads = ThreadPoolExecutor(SLOW_TORCH_UPLOADS + 1)
    try:
        with LoaderWatch() as watch, busy_server.client() as uploader:
            slow = [
                uploads.submit(upload_raw, uploader, path, path.stem) for path in slow_checkpoints
            ]
            wait_for(lambda: running_loaders() >= 2, 60, "both torch loaders are busy")
            # A torch upload beyond CKPT_MAX_TORCH_LOADERS waits for a free loader.
            beyond = uploads.submit(upload_raw, uploader, quick_checkpoint, "beyond-the-cap")
            worst = _worst_latencies(light_route_probes(busy_client, tiny_id), rounds=3)
            assert all(seconds < LIGHT_ROUTE_SECONDS for seconds in worst.values()), worst
            assert running_loaders() >= 1 and throttled.still_open(), "the slow work ended early"
            _assert_all_created([*slow, beyond])
        assert watch.most == 2  # never more loaders than CKPT_MAX_TORCH_LOADERS
    finally:
        throttled.close()
        uploads.shutdown(wait=True)
    wait_for(
        lambda: not leftover_temp_files(busy_server.live.data_dir),
        30,
        "the interrupted uploads' partial files are gone",
    )


def _worst_latencies(
    probes: dict[str, Callable[[], httpx.Response]], rounds: int
) -> dict[str, float]:
    worst = dict.fromkeys(probes, 0.0)
    for _ in range(rounds):
        for route, probe in probes.items():
            seconds, response = timed(probe)
            assert response.status_code == 200, (route, response.text)
            worst[route] = max(worst[route], seconds)
    return worst


def _assert_all_created(futures: list[Future[httpx.Response]]) -> None:
    for future in futures:
        response = future.result(timeout=300)
        assert response.status_code == 201, response.text
        assert response.json()["format"] == "torch"


def long_prompt() -> str:
    words = " ".join(CORPUS).split()
    chooser = random.Random(0)
    text = " ".join(chooser.choice(words) for _ in range(PROMPT_CHARS // 3))
    return text[:PROMPT_CHARS]


def test_tokenizing_a_long_prompt_does_not_delay_health(
    busy_server: AuthServer, busy_client: httpx.Client, tiny_id: str
) -> None:
    """The worst /health while a 250k-character prompt is tokenised, against the worst /health
    over as many probes with no prompt in flight, in alternating rounds of the same run: on a
    shared 2-core machine the scheduler alone delays a probe by tens of ms now and then, and
    only what the prompt adds on top is the server's doing."""
    prompt = long_prompt()
    during: list[float] = []
    quiet: list[float] = []
    with busy_server.client() as prompter, ThreadPoolExecutor(1) as background:
        for _ in range(3):
            request = background.submit(generate, prompter, "tiny", prompt)
            probes: list[float] = []
            while not request.done():
                probes.append(_health_seconds(busy_client))
            answer = request.result()
            # Refused only once tokenized: the prompt's token count is in the message.
            assert answer.status_code == 422, answer.text
            message = answer.json()["error"]
            too_long = "Input validation error: `inputs` must have less than 64 tokens. Given: "
            assert message.startswith(too_long), message
            assert int(message.removeprefix(too_long)) > PROMPT_CHARS // 4  # all of it tokenized
            assert len(probes) >= 3, "the prompt request ended before /health could be probed"
            during.extend(probes)
            quiet.extend(_health_seconds(busy_client) for _ in probes)
    added = max(during) - max(quiet)
    assert added <= HEALTH_DELAY_SECONDS, (sorted(quiet)[-3:], sorted(during)[-5:])


def _health_seconds(client: httpx.Client) -> float:
    seconds, response = timed(lambda: client.get("/health"))
    assert response.status_code == 200
    return seconds


def test_an_upload_beyond_the_loaders_waits_then_answers_503(
    tmp_path: Path, slow_checkpoints: list[Path], quick_checkpoint: Path
) -> None:
    live = LiveServer(tmp_path / "data", max_torch_loaders=1, torch_loader_wait_seconds=1)
    with live, live.client() as client, ThreadPoolExecutor(1) as background:
        slow = background.submit(upload_raw, client, slow_checkpoints[0], "slow")
        wait_for(lambda: running_loaders() == 1, 60, "the torch loader is busy")
        waited, refused = timed(lambda: upload_raw(client, quick_checkpoint, "refused"))
        assert not slow.done(), "the slow load ended before the wait did"
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "torch_loaders_busy"
        assert "CKPT_MAX_TORCH_LOADERS" in error["message"]
        assert waited >= 1.0
        assert slow.result(timeout=300).status_code == 201
        assert client.get("/v1/checkpoints/refused").status_code == 404
        assert not leftover_temp_files(live.data_dir)
        retried = upload_raw(client, quick_checkpoint, "refused")
        assert retried.status_code == 201, retried.text
