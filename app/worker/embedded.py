"""The embedded setup: one `ckpt worker` process beside the API, owned by the app's lifespan."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

from app.config import Settings
from app.lifeline import parent_env

log = logging.getLogger(__name__)


class EmbeddedWorker:
    """Starts the worker, restarts it if it dies, stops it when the API shuts down."""

    def __init__(self, settings: Settings) -> None:
        self._env = {
            **os.environ,
            "CKPT_DATA_DIR": str(settings.data_dir),
            "CKPT_DATABASE_URL": settings.resolved_database_url,
            "CKPT_DEVICE": settings.device,
            # round_trip re-scans archives under the limits they were accepted with
            "CKPT_MAX_ZIP_ENTRIES": str(settings.max_zip_entries),
            "CKPT_MAX_UNCOMPRESSED_BYTES": str(settings.max_uncompressed_bytes),
            "CKPT_TORCH_MEMORY_BYTES": str(settings.torch_memory_bytes),
            "CKPT_TORCH_CPU_SECONDS": str(settings.torch_cpu_seconds),
            **parent_env(),  # the worker ends with this process (app.lifeline)
        }
        self._stopping = threading.Event()
        self._process = self._spawn()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="embedded-worker")
        self._watcher.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker"],
            env=self._env,
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
