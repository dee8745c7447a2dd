"""A real `ckpt serve` process on a data dir that a test can SIGKILL and start again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from app import faults
from tests.live_server import free_port
from tests.worker_process import ROOT, TEST_LEASE_SECONDS

STARTUP_SECONDS = 90


class ServeProcess:
    """`ckpt migrate` then `ckpt serve`; its output is appended to `log_path` (by default
    `<data dir>/../server.log`)."""

    def __init__(self, data_dir: Path, log_path: Path | None = None, **env: str) -> None:
        self.data_dir = data_dir
        self.log_path = log_path or data_dir.parent / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "CKPT_DATA_DIR": str(data_dir),
            "CKPT_PORT": str(self.port),
            "CKPT_DEVICE": "cpu",
            "CKPT_EMBEDDED_WORKER": "false",
            "CKPT_JOB_LEASE_SECONDS": TEST_LEASE_SECONDS,
            "CKPT_WORKER_POLL_SECONDS": "0.1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        cli = [sys.executable, "-m", "app.cli"]
        if not (self.data_dir / "registry.sqlite3").exists():  # a restart needs no migration
            migrate = [*cli, "migrate"]
            subprocess.run(migrate, env=self.env, cwd=ROOT, check=True, capture_output=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*cli, "serve"], env=self.env, cwd=ROOT, stdout=log, stderr=log
            )
        self._wait_healthy()
        return self

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def wait_for_fault(self, point: str, timeout: float = 60) -> None:
        marker = faults.marker(self.data_dir, point)
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert self.running, "the server exited before reaching the fault point"
            assert time.monotonic() < deadline, f"no upload reached {point} in {timeout} s"
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the server and its embedded worker at once, as a power cut would."""
        assert self.process is not None
        family = [psutil.Process(self.process.pid), *self._children()]
        for member in family:
            member.send_signal(signal.SIGKILL)
        psutil.wait_procs(family, timeout=30)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _children(self) -> list[psutil.Process]:
        assert self.process is not None
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if not self.running:
                raise RuntimeError(f"ckpt serve exited during start-up:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ckpt serve was not healthy in {STARTUP_SECONDS} s")
            time.sleep(0.1)

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
