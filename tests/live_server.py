"""A real uvicorn server on a free loopback port, running in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from app.config import Settings
from app.db.migrate import upgrade
from app.main import create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LiveServer:
    def __init__(self, data_dir: Path, **overrides: object) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # Tests start their own worker processes where they need them.
        overrides.setdefault("embedded_worker", False)
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

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir
