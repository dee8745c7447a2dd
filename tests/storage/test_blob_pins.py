"""A checkpoint's blobs stay pinned in the S3 blob cache while it is in use, in every process
sharing the cache; one that alone needs more than CKPT_BLOB_CACHE_BYTES is refused, naming it."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.ingest.types import FileRecord
from app.records import CheckpointRecord
from app.runtime.loading import materialize
from app.storage.cache import BlobCache, BlobCacheTooSmall
from app.storage.pins import evicting, is_pinned, pin
from app.storage.s3 import S3BlobStore
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.records import record
from tests.storage.conftest import new_bucket
from tests.storage.pin_holder import blobs_pinned_elsewhere
from tests.worker_process import WorkerProcess, wait_for_report

SHARD = 250


def make_store(s3: Any, root: Path, budget: int) -> S3BlobStore:
    cache = BlobCache(root / "cache" / "blobs", budget)
    store = S3BlobStore(root, f"s3://{new_bucket(s3)}/ckpt", cache, orphan_grace_seconds=0)
    store.prepare()
    return store


def put(store: S3BlobStore, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    staged = store.tmp_dir / digest
    staged.write_bytes(data)
    store.put(staged, digest)
    return digest


def sharded(store: S3BlobStore, shards: int) -> CheckpointRecord:
    """A checkpoint of `shards` distinct files of SHARD bytes, stored in the bucket."""
    files = []
    for i in range(shards):
        data = os.urandom(SHARD)
        digest = put(store, data)
        files.append(
            FileRecord(path=f"model-{i}.safetensors", size=SHARD, sha256=digest, origin="member")
        )
    return record(id="f" * 32, name="sharded", files=tuple(files))


def cached(store: S3BlobStore) -> set[str]:
    return {p.name for p in store.cache.root.rglob("*") if p.is_file()}


def fetched_long_ago(store: S3BlobStore, data: bytes, seconds: float) -> str:
    digest = put(store, data)
    path = store.local_path(digest)
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))
    return digest


def test_a_checkpoint_larger_than_the_cache_is_refused_naming_the_setting(
    s3: Any, tmp_path: Path
) -> None:
    store = make_store(s3, tmp_path / "data", budget=3 * SHARD - 1)
    view = sharded(store, 3)
    root = tmp_path / "data" / "cache" / "checkpoints"
    with pytest.raises(BlobCacheTooSmall) as raised:
        materialize(view, store, root)
    assert (raised.value.status, raised.value.code) == (507, "blob_cache_too_small")
    assert raised.value.message == (
        f"checkpoint sharded@1 needs {3 * SHARD} bytes of blob cache; "
        f"CKPT_BLOB_CACHE_BYTES is {3 * SHARD - 1}"
    )
    assert cached(store) == set(), "refused before downloading anything"
    assert list(root.iterdir()) == [], "no folder and no lock file left behind"


def test_a_fitting_checkpoint_keeps_every_shard_in_a_cache_full_of_other_blobs(
    s3: Any, tmp_path: Path
) -> None:
    store = make_store(s3, tmp_path / "data", budget=4 * SHARD)
    unpinned = [fetched_long_ago(store, os.urandom(SHARD), 100 + i) for i in range(2)]
    pinned = [fetched_long_ago(store, os.urandom(SHARD), 200 + i) for i in range(2)]
    view = sharded(store, 3)
    shards = {f.sha256 for f in view.files}
    root = tmp_path / "data" / "cache" / "checkpoints"
    with blobs_pinned_elsewhere(*(store.cache.path(d) for d in pinned)):
        with materialize(view, store, root) as held:
            assert cached(store) == shards | set(pinned), "only the unpinned blobs went"
            for file in view.files:
                assert (held.path / file.path).stat().st_size == SHARD
                assert is_pinned(store.cache.path(file.sha256))
            store.cache.evict()
            assert cached(store) == shards | set(pinned), "over budget while all are in use"
        assert not any(is_pinned(store.cache.path(d)) for d in shards)
    store.cache.evict()
    assert cached(store) == shards | {pinned[0]}, "released: back within the budget, LRU first"
    assert not set(unpinned) & cached(store)


def test_a_blob_pinned_by_another_process_is_not_evicted(s3: Any, tmp_path: Path) -> None:
    store = make_store(s3, tmp_path / "data", budget=2 * SHARD)
    first = fetched_long_ago(store, os.urandom(SHARD), 20)
    second = fetched_long_ago(store, os.urandom(SHARD), 10)
    with blobs_pinned_elsewhere(store.cache.path(first)):
        third = put(store, os.urandom(SHARD))
        store.local_path(third)
        assert cached(store) == {first, third}, "the older one is pinned: the next oldest goes"
    store.local_path(second)
    assert cached(store) == {second, third}


def test_a_pin_racing_an_eviction_never_holds_the_removed_file(tmp_path: Path) -> None:
    victim = tmp_path / "blob"
    victim.write_bytes(b"x")
    results: list[object] = []
    with evicting(victim) as free:
        assert free
        racer = threading.Thread(target=lambda: results.append(pin(victim)))
        racer.start()
        racer.join(0.2)  # blocked on the exclusive lock, or not yet started: both must end None
    racer.join(10)
    assert results == [None]
    assert not victim.exists()


# -- over HTTP: the server answers the error ----------------------------------------------------


@pytest.fixture(scope="module")
def server(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("blob-pins") / "data"
    url = f"s3://{new_bucket(s3)}/blobs"
    with LiveServer(data_dir, storage_url=url, blob_cache_bytes=4096) as live:
        yield live


@pytest.fixture(scope="module")
def too_large(client: httpx.Client, tiny: TinyModel) -> tuple[dict[str, Any], str]:
    """The tiny checkpoint, uploaded, and the error it must meet in a 4096-byte blob cache."""
    uploaded = upload_raw(client, tiny.zip_stored, "tiny")
    assert uploaded.status_code == 201, uploaded.text
    body: dict[str, Any] = uploaded.json()
    need = sum({f["sha256"]: f["size"] for f in body["files"]}.values())
    assert need > 4096
    return (
        body,
        f"checkpoint tiny@1 needs {need} bytes of blob cache; CKPT_BLOB_CACHE_BYTES is 4096",
    )


def test_generation_from_a_checkpoint_larger_than_the_cache_answers_507(
    client: httpx.Client, server: LiveServer, too_large: tuple[dict[str, Any], str]
) -> None:
    body, message = too_large
    response = client.post(
        f"/models/{body['id']}/generate",
        json={"inputs": "hello", "parameters": {"max_new_tokens": 2}},
    )
    assert response.status_code == 507, response.text
    assert response.json() == {"error": message, "error_type": "blob_cache_too_small"}
    assert [p for p in (server.data_dir / "cache" / "blobs").rglob("*") if p.is_file()] == []


def test_its_verification_reports_the_error_naming_the_setting(
    client: httpx.Client, server: LiveServer, too_large: tuple[dict[str, Any], str]
) -> None:
    body, message = too_large
    environment = {"CKPT_STORAGE_URL": str(server.settings.storage_url)}
    with WorkerProcess(server.data_dir, CKPT_BLOB_CACHE_BYTES="4096", **environment):
        report = wait_for_report(client, body["verification"]["id"])
    assert report["status"] == "error", report
    assert report["error"] == f"BlobCacheTooSmall: {message}"
