"""What `make serve` prints with default settings: one line per event, each in the configured
format, from `ckpt migrate` to SIGTERM; no alembic chatter at each start, no library warning or
progress bar per model load, verification or generation."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import free_port, wait_until_healthy
from tests.worker_process import ROOT, wait_for_report

CLI = [sys.executable, "-m", "app.cli"]
# app.observability.logs.TEXT_FORMAT: time level logger [request id] message
TEXT_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \[[\w-]+\] \S"
)


def default_env(data: Path) -> dict[str, str]:
    env = {**os.environ, "CKPT_DATA_DIR": str(data), "CKPT_PORT": str(free_port())}
    for name in ("CKPT_LOG_FORMAT", "CKPT_LOG_LEVEL", "CKPT_DEVICE", "CKPT_EMBEDDED_WORKER"):
        env.pop(name, None)
    return env


def assert_passed(report: dict[str, Any]) -> None:
    assert report["status"] == "passed", report


def served_session(url: str, tiny: TinyModel) -> None:
    """Upload (verified on arrival), verify against a reference, generate twice."""
    with httpx.Client(base_url=url, timeout=120) as client:
        uploaded = upload_raw(client, tiny.zip_stored, "quiet")
        assert uploaded.status_code == 201
        checkpoint = uploaded.json()
        assert_passed(wait_for_report(client, checkpoint["verification"]["id"]))
        queued = client.post(
            "/v1/checkpoints/quiet/verifications",
            json={"reference": {"checkpoint": checkpoint["id"]}},
        )
        assert queued.status_code == 202
        assert_passed(wait_for_report(client, queued.json()["id"]))
        for _ in range(2):
            generated = client.post(
                "/models/quiet/generate",
                json={"inputs": "hello world", "parameters": {"max_new_tokens": 4}},
            )
            assert generated.status_code == 200


def test_migrate_and_serve_log_one_line_per_event(tmp_path: Path, tiny: TinyModel) -> None:
    env = default_env(tmp_path / "data")
    migrate = subprocess.run(
        [*CLI, "migrate"], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen([*CLI, "serve"], env=env, cwd=ROOT, stdout=output, stderr=output)
    try:
        url = f"http://127.0.0.1:{env['CKPT_PORT']}"
        wait_until_healthy(url, process)
        served_session(url, tiny)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    migrated = migrate.stderr.splitlines()
    lines = migrated + log.read_text().splitlines()

    assert [line for line in migrated if " app.db.migrate " in line and " applied: " in line]
    assert not [line for line in lines if "alembic" in line]
    assert not [line for line in lines if "Warning" in line or " WARNING " in line]
    assert not [line for line in lines if not TEXT_LINE.match(line)]
    assert [line for line in lines if "POST /models/quiet/generate 200" in line]
