"""`ckpt serve` as deployed: JSON log lines on stderr, one access line per request carrying its
id (uvicorn's own access log replaced), no header or query string ever logged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db.migrate import upgrade
from tests.database import database_env, fresh_database
from tests.live_server import free_port, wait_until_healthy
from tests.worker_process import ROOT

SECRET = "Bearer do-not-log-this-3f9a1c"


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120)

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM, then every stderr line, each parsed as JSON."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("json-logs")
    sqlite_url = f"sqlite:///{root / 'data' / 'registry.sqlite3'}"
    with fresh_database("json_logs", sqlite_url) as url:
        env = {
            **os.environ,
            **database_env(url),
            "CKPT_DATA_DIR": str(root / "data"),
            "CKPT_PORT": str(free_port()),
            "CKPT_DEVICE": "cpu",
            "CKPT_EMBEDDED_WORKER": "false",  # only the API's lines are under test
            "CKPT_LOG_FORMAT": "json",
            "CKPT_LOG_LEVEL": "info",
        }
        (root / "data").mkdir()
        upgrade(url)  # `ckpt migrate`'s own code, without paying for another interpreter
        log = root / "stderr.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve"], env=env, cwd=ROOT, stderr=stderr
            )
        served = Served(f"http://127.0.0.1:{env['CKPT_PORT']}", process, log)
        try:
            wait_until_healthy(served.url, process)
            yield served
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_json_lines_with_one_access_line_per_request(served: Served) -> None:
    with served.client() as client:
        found = client.get(
            "/v1/checkpoints", headers={"X-Request-ID": "json-list-1", "Authorization": SECRET}
        )
        missing = client.get(
            "/v1/checkpoints/nope?token=query-secret", headers={"X-Request-ID": "json-404"}
        )
        generated = client.get("/health").headers["X-Request-ID"]
    lines = served.stop()

    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
    access = [line for line in lines if line["logger"] == "app.access"]
    for request_id, response, path in (
        ("json-list-1", found, "/v1/checkpoints"),
        ("json-404", missing, "/v1/checkpoints/nope"),
        (generated, None, "/health"),
    ):
        (line,) = [a for a in access if a.get("request_id") == request_id]
        assert line["method"] == "GET" and line["path"] == path
        assert line["status"] == (response.status_code if response else 200)
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    text = served.log.read_text()
    assert "do-not-log-this" not in text and "query-secret" not in text
