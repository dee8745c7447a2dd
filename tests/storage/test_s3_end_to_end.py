"""A real server and worker with their blobs in S3 (moto on loopback): upload, download, diff,
verify, generate; nothing lands under data_dir/blobs and a corrupted object is caught."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.torch import save_file

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.storage.conftest import new_bucket, object_keys
from tests.worker_process import WorkerProcess, wait_for_report

PREFIX = "registry/blobs"
SAME_HEADERS = ("content-length", "content-type", "etag", "x-checkpoint-sha256")


@pytest.fixture(scope="module")
def bucket(s3: Any) -> str:
    return new_bucket(s3)


@pytest.fixture(scope="module")
def server(bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("s3-e2e") / "data"
    url = f"s3://{bucket}/{PREFIX}"
    with LiveServer(data_dir, storage_url=url, orphan_grace_seconds=0) as live:
        yield live


@pytest.fixture(scope="module")
def worker(server: LiveServer) -> Iterator[WorkerProcess]:
    storage_url = str(server.settings.storage_url)
    with WorkerProcess(server.data_dir, CKPT_STORAGE_URL=storage_url) as process:
        yield process


@pytest.fixture(scope="module")
def original(client: httpx.Client, tiny: TinyModel, worker: WorkerProcess) -> dict[str, Any]:
    response = upload_raw(client, tiny.zip_stored, "tiny")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def cached_files(server: LiveServer) -> list[Path]:
    return [p for p in (server.data_dir / "cache" / "blobs").rglob("*") if p.is_file()]


def shifted_weights(tiny: TinyModel, path: Path) -> Path:
    state = {k: v.clone() + 1 for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, path)
    return path


def test_upload_lands_in_the_bucket_only(
    s3: Any, bucket: str, server: LiveServer, original: dict[str, Any]
) -> None:
    keys = object_keys(s3, bucket)
    digests = {original["sha256"]} | {f["sha256"] for f in original["files"]}
    assert keys == sorted(f"{PREFIX}/{d[:2]}/{d}" for d in digests)
    assert not (server.data_dir / "blobs").exists()
    assert list((server.data_dir / "tmp").iterdir()) == []


def test_download_is_byte_identical_and_ranged(
    client: httpx.Client, original: dict[str, Any], tiny: TinyModel
) -> None:
    expected = tiny.zip_stored.read_bytes()
    full = client.get(f"/v1/checkpoints/{original['id']}/download")
    assert full.status_code == 200
    assert full.content == expected
    assert full.headers["content-length"] == str(len(expected))
    assert full.headers["etag"] == f'"{hashlib.sha256(expected).hexdigest()}"'
    assert full.headers["accept-ranges"] == "bytes"
    assert 'filename="model.zip"' in full.headers["content-disposition"]
    part = client.get(
        f"/v1/checkpoints/{original['id']}/download", headers={"Range": "bytes=10-109"}
    )
    assert part.status_code == 206
    assert part.content == expected[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(expected)}"
    tail = client.get(f"/v1/checkpoints/{original['id']}/download", headers={"Range": "bytes=-7"})
    assert tail.content == expected[-7:]
    beyond = client.get(
        f"/v1/checkpoints/{original['id']}/download", headers={"Range": f"bytes={len(expected)}-"}
    )
    assert beyond.status_code == 416
    assert beyond.json()["error"]["code"] == "range_not_satisfiable"
    config = client.get(f"/v1/checkpoints/{original['id']}/files/config.json")
    assert config.content == (tiny.folder / "config.json").read_bytes()


def test_download_headers_match_the_local_backend(
    client: httpx.Client, original: dict[str, Any], tiny: TinyModel, tmp_path: Path
) -> None:
    remote = client.get(f"/v1/checkpoints/{original['id']}/files/config.json")
    with LiveServer(tmp_path / "local") as local, local.client() as http:
        assert upload_raw(http, tiny.zip_stored, "tiny").status_code == 201
        on_disk = http.get("/v1/checkpoints/tiny/files/config.json")
    assert on_disk.content == remote.content
    for header in SAME_HEADERS:
        assert remote.headers[header] == on_disk.headers[header], header
    assert remote.headers["content-disposition"] == on_disk.headers["content-disposition"]


def test_verification_by_a_worker_passes(client: httpx.Client, original: dict[str, Any]) -> None:
    report = wait_for_report(client, original["verification"]["id"])
    assert report["status"] == "passed", report
    assert {c["name"] for c in report["checks"]} >= {"integrity", "round_trip"}


def test_diff_reads_blobs_through_the_cache(
    client: httpx.Client, original: dict[str, Any], tiny: TinyModel, tmp_path: Path
) -> None:
    shifted = upload_raw(client, shifted_weights(tiny, tmp_path / "shifted.safetensors"), "shift")
    assert shifted.status_code == 201, shifted.text
    diff = client.get(f"/v1/checkpoints/{original['id']}/diff/{shifted.json()['id']}")
    assert diff.status_code == 200, diff.text
    body = diff.json()
    assert body["identical_weights"] is False
    assert body["summary"]["changed"] > 0
    same = client.get(f"/v1/checkpoints/{original['id']}/diff/{original['id']}").json()
    assert same["identical_weights"] is True


def test_generates_text(client: httpx.Client, original: dict[str, Any]) -> None:
    response = client.post(
        f"/models/{original['id']}/generate",
        json={"inputs": "hello world", "parameters": {"max_new_tokens": 4, "do_sample": False}},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-generated-tokens"] == "4"
    assert isinstance(response.json()["generated_text"], str)


def test_corrupted_object_is_detected(
    s3: Any,
    bucket: str,
    client: httpx.Client,
    server: LiveServer,
    original: dict[str, Any],
    tiny: TinyModel,
    tmp_path: Path,
) -> None:
    victim = upload_raw(client, shifted_weights(tiny, tmp_path / "victim.safetensors"), "victim")
    victim_body = victim.json()
    wait_for_report(client, victim_body["verification"]["id"])
    sha = victim_body["sha256"]
    key = f"{PREFIX}/{sha[:2]}/{sha}"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-5] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    for cached in cached_files(server):
        if cached.name == sha:
            cached.unlink()  # as if evicted: the next reader fetches the tampered object
    diff = client.get(f"/v1/checkpoints/{original['id']}/diff/{victim_body['id']}")
    assert diff.status_code == 502
    assert diff.json()["error"]["code"] == "blob_corrupted"
    assert sha in diff.json()["error"]["message"]
    assert sha not in {p.name for p in cached_files(server)}
    response = client.post(f"/v1/checkpoints/{victim_body['id']}/verifications", json={})
    report = wait_for_report(client, response.json()["id"])
    assert report["status"] == "error"
    assert "corrupted" in report["error"]


def test_delete_collects_the_objects(
    s3: Any, bucket: str, client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    path = tmp_path / "lonely.safetensors"
    state = {k: v.clone() * 2 for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, path)
    lonely = upload_raw(client, path, "lonely").json()
    key = f"{PREFIX}/{lonely['sha256'][:2]}/{lonely['sha256']}"
    assert key in object_keys(s3, bucket)
    assert client.delete(f"/v1/checkpoints/{lonely['id']}").status_code == 204
    assert key not in object_keys(s3, bucket)


def test_startup_removes_orphan_objects(
    s3: Any, bucket: str, server: LiveServer, original: dict[str, Any]
) -> None:
    orphan = hashlib.sha256(b"an interrupted upload").hexdigest()
    s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{orphan[:2]}/{orphan}", Body=b"x")
    same = {"storage_url": server.settings.storage_url, "orphan_grace_seconds": 0}
    with LiveServer(server.data_dir, database_url=server.settings.resolved_database_url, **same):
        keys = object_keys(s3, bucket)
    assert f"{PREFIX}/{orphan[:2]}/{orphan}" not in keys
    assert f"{PREFIX}/{original['sha256'][:2]}/{original['sha256']}" in keys
