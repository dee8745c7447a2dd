"""Secrets never reach the logs: a real `ckpt serve` on all interfaces, its output captured while
clients send an API key and a Hugging Face token, and the in-process loggers at DEBUG."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from tests.auth.helpers import bearer, create_key, migrated_data_dir
from tests.live_server import LiveServer, free_port, wait_until_healthy
from tests.worker_process import ROOT

HF_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz012345"


def exercise(client: httpx.Client, key: str) -> None:
    """Requests that succeed, fail auth, are refused, and fail validation, each with a secret."""
    hf = bearer(HF_TOKEN)
    assert client.get("/v1/checkpoints", headers=bearer(key)).status_code == 200
    assert client.get("/v1/checkpoints", headers=hf).status_code == 401
    assert client.post("/v1/completions", json={}, headers=hf).status_code == 401
    assert client.post("/v1/completions", json={}, headers=bearer(key)).status_code == 400
    assert client.post("/generate", json={"inputs": 1}, headers=bearer(key)).status_code == 422
    assert client.delete("/v1/checkpoints/nope", headers=bearer(key)).status_code == 403
    assert client.get("/v1/checkpoints/nope", headers=bearer(key)).status_code == 404


def assert_no_secret(text: str, key: str) -> None:
    assert "/v1/checkpoints" in text  # the requests were logged: the check below means something
    for secret in (key, key.split("_", 2)[2], HF_TOKEN, HF_TOKEN[3:]):
        assert secret not in text


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    data = migrated_data_dir(tmp_path_factory.mktemp("serve-logs") / "data")
    key = create_key(Settings(data_dir=data), "logger", "write").key
    log_file = data.parent / "serve.log"
    port = free_port()
    env = {
        **os.environ,
        "CKPT_DATA_DIR": str(data),
        "CKPT_EMBEDDED_WORKER": "false",
        "CKPT_LOG_LEVEL": "DEBUG",
    }
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", str(port)]
    with log_file.open("wb") as output:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process)
    yield url, log_file, key
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_serve_on_all_interfaces_with_a_key_requires_it(serve: tuple[str, Path, str]) -> None:
    url, _, key = serve
    assert httpx.get(f"{url}/v1/checkpoints").status_code == 401
    assert httpx.get(f"{url}/v1/checkpoints", headers=bearer(key)).status_code == 200


def test_served_process_logs_no_secret(serve: tuple[str, Path, str]) -> None:
    url, log_file, key = serve
    with httpx.Client(base_url=url, timeout=60) as client:
        exercise(client, key)
    time.sleep(0.2)  # let the last access lines reach the file
    assert_no_secret(log_file.read_text(errors="replace"), key)


def test_in_process_loggers_see_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with LiveServer(tmp_path / "data") as live, live.client() as client:
        key = create_key(live.settings, "caplog", "write").key
        exercise(client, key)
    text = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    assert_no_secret(text, key)
