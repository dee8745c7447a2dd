"""A real uvicorn server on a free loopback port, running in a background thread."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from app.config import Settings
from app.db.migrate import upgrade
from app.db.scratch import create_database, drop_database
from app.main import create_app
from tests.database import forget, on_postgresql, remember


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Until a `ckpt serve` subprocess answers GET /health with 200 (raises if it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
        time.sleep(0.1)


class LiveServer:
    def __init__(self, data_dir: Path, **overrides: object) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # Tests start their own worker processes where they need them.
        overrides.setdefault("embedded_worker", False)
        # On the PostgreSQL pass each server gets its own database, dropped when it stops.
        self.own_database = on_postgresql() and "database_url" not in overrides
        if self.own_database:
            overrides["database_url"] = create_database(data_dir.parent.name)
            remember(data_dir, str(overrides["database_url"]))
        self.settings = Settings(data_dir=data_dir, **overrides)  # type: ignore[arg-type]
        upgrade(self.settings.resolved_database_url)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(self.settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        if self.own_database:
            forget(self.data_dir)
            drop_database(self.settings.resolved_database_url)

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir
