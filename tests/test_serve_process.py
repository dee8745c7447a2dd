"""`ckpt serve` as a user runs it: a real process, its embedded worker, real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import free_port, wait_until_healthy
from tests.worker_process import ROOT, checks_by_name, wait_for_report


@pytest.fixture(scope="module")
def serve(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    data = tmp_path_factory.mktemp("serve") / "data"
    env = {
        **os.environ,
        "CKPT_DATA_DIR": str(data),
        "CKPT_PORT": str(free_port()),
        "CKPT_DEVICE": "cpu",
    }
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    process = subprocess.Popen([*cli, "serve"], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{env['CKPT_PORT']}"
    wait_until_healthy(url, process, timeout=60)
    yield url, process
    if process.poll() is None:
        process.kill()


def worker_children(process: subprocess.Popen[bytes]) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(process.pid).children()
        if "worker" in " ".join(child.cmdline())
    ]


def test_serve_verifies_uploads_with_its_embedded_worker(
    serve: tuple[str, subprocess.Popen[bytes]], tiny: TinyModel
) -> None:
    url, process = serve
    assert len(worker_children(process)) == 1
    with httpx.Client(base_url=url, timeout=120) as client:
        checkpoint = upload_raw(client, tiny.zip_stored, "served").json()
        report = wait_for_report(client, checkpoint["verification"]["id"])
    assert report["status"] == "passed"
    assert checks_by_name(report)["load"]["status"] == "passed"


def test_sigterm_stops_the_server_and_its_worker(
    serve: tuple[str, subprocess.Popen[bytes]],
) -> None:
    _, process = serve
    (worker,) = worker_children(process)
    process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so a supervisor sees the signal.
    assert process.wait(timeout=60) == -signal.SIGTERM
    worker.wait(timeout=60)
    assert not worker.is_running()


def test_killed_server_takes_its_worker_down(tmp_path: Path) -> None:
    env = {**os.environ, "CKPT_DATA_DIR": str(tmp_path), "CKPT_PORT": str(free_port())}
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True)
    process = subprocess.Popen([*cli, "serve"], env=env, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not worker_children(process):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (worker,) = worker_children(process)
    process.kill()
    process.wait(timeout=30)
    worker.wait(timeout=60)
    assert not worker.is_running()
