"""SIGKILL a real `ckpt serve` at each stage of an upload, start it again on the same data dir.

Stages: mid-body (part of the body spooled to tmp/), after the blobs are in the store but before
the row commits, and after the commit (before the response). The fault points come from
app/faults.py. A worker SIGKILLed on its own mid-job is covered by
tests/worker/test_worker_lifecycle.py; here the whole server goes down with its embedded worker.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.ingest.spool import BUFFER_BYTES
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.crash.payloads import safetensors_bytes
from tests.crash.registry_state import assert_consistent, assert_downloads, temp_entries
from tests.crash.serve_process import ServeProcess
from tests.worker_process import wait_for_report

WORKER_ON = {"CKPT_EMBEDDED_WORKER": "true"}


def send_half_a_body(port: int, body: bytes) -> socket.socket:
    """A raw HTTP upload that announces `body` but sends only its first half."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        "POST /v1/checkpoints?name=doomed HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: len(body) // 2])
    return sock


def wait_for_spooled_bytes(data_dir: Path, at_least: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not any(p.is_file() and p.stat().st_size >= at_least for p in temp_entries(data_dir)):
        assert time.monotonic() < deadline, "the server never wrote the upload to tmp/"
        time.sleep(0.02)


def kill_mid_body(server: ServeProcess) -> None:
    body = safetensors_bytes(seed=1, numel=3 * BUFFER_BYTES // 4)  # 3 buffers: half is spooled
    with send_half_a_body(server.port, body):
        wait_for_spooled_bytes(server.data_dir, BUFFER_BYTES)
        server.kill()


def kill_at_fault_point(server: ServeProcess, point: str, upload: Path) -> None:
    with ThreadPoolExecutor(1) as pool, server.client() as client:
        pending: Future[httpx.Response] = pool.submit(upload_raw, client, upload, "doomed")
        server.wait_for_fault(point)
        server.kill()
        assert isinstance(pending.exception(timeout=60), httpx.TransportError)


@pytest.mark.parametrize("stage", ["mid_body", "after_blobs", "after_commit"])
def test_killed_upload_leaves_a_consistent_registry(
    stage: str, tmp_path: Path, tiny: TinyModel
) -> None:
    data = tmp_path / "data"
    server = ServeProcess(data, CKPT_FAULT_POINT=f"{stage}:2").start()  # the survivor passes
    with server.client() as client:
        config = tiny.model.config.to_json_string()  # else n_head is assumed: inconclusive
        survivor = upload_raw(client, tiny.safetensors, "survivor", config=config)
    assert survivor.status_code == 201, survivor.text
    if stage == "mid_body":
        kill_mid_body(server)
    else:
        kill_at_fault_point(server, stage, tiny.zip_stored)
    assert temp_entries(data) or stage == "after_commit"  # the kill did leave something behind

    committed = stage == "after_commit"
    # The worker costs seconds: one stage shows that queued jobs run after the restart.
    restarted = ServeProcess(data, **(WORKER_ON if committed else {}))
    with restarted, restarted.client() as client:
        rows = {row["name"]: row for row in assert_consistent(data, client)}
        assert sorted(rows) == (["doomed", "survivor"] if committed else ["survivor"])
        assert_downloads(client, "survivor", tiny.safetensors.read_bytes())
        if committed:
            assert_downloads(client, "doomed", tiny.zip_stored.read_bytes())
        for row in rows.values():
            assert row["verification"]["status"] == "queued"
            if committed:
                report = wait_for_report(client, row["verification"]["id"])
                assert report["status"] == "passed", report


def wait_for_status(client: httpx.Client, verification_id: str, status: str) -> None:
    deadline = time.monotonic() + 60
    while client.get(f"/v1/verifications/{verification_id}").json()["status"] != status:
        assert time.monotonic() < deadline, f"verification never reached {status!r}"
        time.sleep(0.02)


def job_attempts(data_dir: Path, verification_id: str) -> list[tuple[str, int]]:
    with sqlite3.connect(data_dir / "registry.sqlite3") as db:
        query = "SELECT state, attempts FROM jobs WHERE subject_id = ?"
        return list(db.execute(query, (verification_id,)))


def test_server_killed_with_its_worker_mid_job_reruns_the_job(
    tmp_path: Path, tiny: TinyModel
) -> None:
    data = tmp_path / "data"
    server = ServeProcess(data, **WORKER_ON).start()
    with server.client() as client:
        checkpoint = upload_raw(client, tiny.zip_stored, "mid-job").json()
        verification_id = checkpoint["verification"]["id"]
        wait_for_status(client, verification_id, "running")
    server.kill()
    assert job_attempts(data, verification_id) == [("running", 1)]

    with ServeProcess(data, **WORKER_ON) as restarted, restarted.client() as client:
        report = wait_for_report(client, verification_id)
        assert report["status"] == "passed", report
        assert job_attempts(data, verification_id) == [("succeeded", 2)]
        assert_consistent(data, client)
