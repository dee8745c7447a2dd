"""The embedded setup: one `ckpt worker` process beside the API, owned by the app's lifespan."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

from app.config import Settings

log = logging.getLogger(__name__)


class EmbeddedWorker:
    """Starts the worker, restarts it if it dies, stops it when the API shuts down."""

    def __init__(self, settings: Settings) -> None:
        self._env = {
            **os.environ,
            "CKPT_DATA_DIR": str(settings.data_dir),
            "CKPT_DATABASE_URL": settings.resolved_database_url,
            "CKPT_DEVICE": settings.device,
        }
        self._stopping = threading.Event()
        self._process = self._spawn()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="embedded-worker")
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=self._env,
            preexec_fn=_terminate_with_parent,
        )

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self._process.poll() is not None:
                log.warning("embedded worker exited (%s); restarting", self._process.returncode)
                self._process = self._spawn()

    def stop(self, timeout: float = 60) -> None:
        self._stopping.set()
        self._watcher.join()
        self._process.terminate()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _terminate_with_parent() -> None:
    """Linux: the worker gets SIGTERM if the API process dies, so no orphan holds the device."""
    if sys.platform == "linux":
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
