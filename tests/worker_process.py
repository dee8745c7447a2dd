"""Real `ckpt worker` processes for tests, and waiting on verifications."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.database import database_env, database_url_for

ROOT = Path(__file__).resolve().parents[1]
TEST_LEASE_SECONDS = "3"


class WorkerProcess:
    def __init__(self, data_dir: Path, **env: str) -> None:
        self.env = {
            **os.environ,
            "CKPT_DATA_DIR": str(data_dir),
            "CKPT_DEVICE": os.environ.get("CKPT_TEST_DEVICE", "cpu"),
            "CKPT_JOB_LEASE_SECONDS": TEST_LEASE_SECONDS,
            "CKPT_WORKER_POLL_SECONDS": "0.1",
            **database_env(database_url_for(data_dir)),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"], env=self.env, cwd=ROOT
        )
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=120)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def wait_for_report(
    client: httpx.Client, verification_id: str, timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report: dict[str, Any] = client.get(f"/v1/verifications/{verification_id}").json()
        if report["status"] not in ("queued", "running"):
            return report
        time.sleep(0.2)
    raise TimeoutError(f"verification {verification_id} did not finish in {timeout} s")


def checks_by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in report["checks"]}
