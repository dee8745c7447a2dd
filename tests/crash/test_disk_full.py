"""A full disk answers 507 `insufficient_storage`, leaves nothing behind and the server goes on.

Two ways to fill it: a real tmpfs of a few MB as the data dir (needs root to mount; skipped
otherwise), and the ENOSPC hook of app/faults.py, which fails one chosen write anywhere.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.ingest.spool import BUFFER_BYTES
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.crash.payloads import safetensors_bytes
from tests.crash.registry_state import assert_consistent, assert_downloads
from tests.crash.serve_process import ServeProcess

TMPFS_BYTES = 3 << 20


def post_bytes(client: httpx.Client, body: bytes, name: str) -> httpx.Response:
    return client.post(
        "/v1/checkpoints",
        content=body,
        params={"name": name},
        headers={"Content-Type": "application/octet-stream"},
    )


def assert_insufficient_storage(response: httpx.Response) -> None:
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert "disk space" in response.json()["error"]["message"]


def assert_still_serving(server: ServeProcess, client: httpx.Client, names: list[str]) -> None:
    small = safetensors_bytes(seed=7)
    response = post_bytes(client, small, "fits")
    assert response.status_code == 201, response.text
    rows = assert_consistent(server.data_dir, client)
    assert sorted(row["name"] for row in rows) == sorted([*names, "fits"])
    assert_downloads(client, "fits", small)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


@contextmanager
def filled(mount_point: Path, leave_bytes: int) -> Iterator[None]:
    """Fill the filesystem with a file until only `leave_bytes` are free; remove it after."""
    filler = mount_point / "filler"
    stats = os.statvfs(mount_point)
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - leave_bytes))
    try:
        yield
    finally:
        filler.unlink()


def test_full_tmpfs_answers_507_and_leaves_nothing(
    tiny_disk: Path, tmp_path: Path, tiny: TinyModel
) -> None:
    server = ServeProcess(tiny_disk / "data", log_path=tmp_path / "server.log")
    with server, server.client() as client:
        # Larger than the free space, smaller than one spool buffer: fails writing the spool.
        too_big = safetensors_bytes(seed=1, numel=(TMPFS_BYTES + (1 << 19)) // 4)
        assert len(too_big) < BUFFER_BYTES
        assert_insufficient_storage(post_bytes(client, too_big, "too-big"))
        assert_consistent(server.data_dir, client)
        # The zip itself fits; the zip plus its unpacked files does not.
        assert tiny.zip_stored.stat().st_size < TMPFS_BYTES // 2 + (1 << 20)
        assert_insufficient_storage(upload_raw(client, tiny.zip_stored, "unpacks-too-big"))
        assert_consistent(server.data_dir, client)
        with filled(tiny_disk, leave_bytes=0):  # a small body is written when the spool closes
            response = post_bytes(client, safetensors_bytes(seed=2), "no-room-at-all")
            assert_insufficient_storage(response)
            assert "receiving the upload" in response.json()["error"]["message"]
            assert_consistent(server.data_dir, client)
        # Room for the small upload's file, not for the database pages its row needs.
        with filled(tiny_disk, leave_bytes=8 << 10):
            response = post_bytes(client, safetensors_bytes(seed=2), "no-room-for-the-row")
            assert_insufficient_storage(response)
            assert "database" in response.json()["error"]["message"]
            assert_consistent(server.data_dir, client)
        assert_still_serving(server, client, [])
    assert "Traceback" not in server.log_text()


def test_enospc_while_spooling_and_while_storing_blobs(tmp_path: Path, tiny: TinyModel) -> None:
    # The first spool write fails half-way; so does placing the second blob of an upload.
    enospc = {"CKPT_FAULT_ENOSPC": "spool:1,blob:2"}
    with ServeProcess(tmp_path / "data", **enospc) as server, server.client() as client:
        assert_insufficient_storage(upload_raw(client, tiny.safetensors, "half-written"))
        assert_consistent(server.data_dir, client)
        assert_insufficient_storage(upload_raw(client, tiny.zip_stored, "first-blob-stored"))
        assert_consistent(server.data_dir, client)  # the blob stored before the failure is gone
        assert upload_raw(client, tiny.zip_stored, "second-try").status_code == 201
        assert_still_serving(server, client, ["second-try"])
    assert "Traceback" not in server.log_text()
