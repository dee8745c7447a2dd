"""Every timestamp the API writes is ISO 8601 UTC ending in `Z`, whatever the database returns.

SQLite hands stored times back without a zone; the views make them aware UTC, so a GET or a
list reads exactly like the POST that created the row.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.auth.helpers import migrated_data_dir, run_cli
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.worker_process import WorkerProcess, wait_for_report

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def assert_utc(*stamps: Any) -> None:
    for stamp in stamps:
        assert isinstance(stamp, str) and ISO_UTC.match(stamp), stamp
        moment = datetime.fromisoformat(stamp)
        offset = moment.utcoffset()
        assert offset is not None and offset.total_seconds() == 0
        assert abs((datetime.now(UTC) - moment).total_seconds()) < 600  # stored as UTC


def test_checkpoint_and_verification_times_end_in_z(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    created = client.post(
        "/v1/checkpoints", files={"file": ("model.zip", tiny.zip_stored.read_bytes())}
    )
    assert created.status_code == 201, created.text
    posted = created.json()
    fetched = client.get(f"/v1/checkpoints/{posted['id']}").json()
    listed = client.get("/v1/checkpoints").json()["items"]
    assert_utc(posted["created_at"], fetched["created_at"], *(i["created_at"] for i in listed))
    assert fetched["created_at"] == posted["created_at"]

    queued = client.post(
        f"/v1/checkpoints/{posted['id']}/verifications", json={"checks": ["integrity"]}
    )
    assert queued.status_code == 202, queued.text
    assert_utc(queued.json()["created_at"])
    with WorkerProcess(server.data_dir):
        report = wait_for_report(client, queued.json()["id"])
    assert_utc(report["created_at"], report["finished_at"])
    history = client.get(f"/v1/checkpoints/{posted['id']}/verifications").json()["items"]
    assert history and all(ISO_UTC.match(v["created_at"]) for v in history)


def test_key_times_end_in_z(tmp_path: Path) -> None:
    data_dir = migrated_data_dir(tmp_path / "data")
    created = run_cli(data_dir, "keys", "create", "--name", "bot", "--scope", "read", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    revoked = run_cli(data_dir, "keys", "revoke", key["id"], "--json")
    assert revoked.returncode == 0, revoked.stderr
    listed = json.loads(run_cli(data_dir, "keys", "list", "--json").stdout)
    (row,) = [item for item in listed if item["id"] == key["id"]]
    assert_utc(key["created_at"], json.loads(revoked.stdout)["revoked_at"])
    assert_utc(row["created_at"], row["revoked_at"])
