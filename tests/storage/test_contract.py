"""The blob storage contract, the same tests over the local disk and S3 (a real moto server)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.errors import NotFound
from app.storage.base import BlobStorage
from app.storage.blobs import BlobStore
from app.storage.cache import BlobCache, CorruptBlob
from app.storage.s3 import S3BlobStore
from tests.storage.conftest import new_bucket, object_keys

PART = 5 << 20  # the smallest multipart part S3 accepts


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStorage]:
    root = tmp_path / "data"
    if request.param == "local":
        backend: BlobStorage = BlobStore(root)
    else:
        s3 = request.getfixturevalue("s3")
        cache = BlobCache(root / "cache" / "blobs", 1 << 30)
        url = f"s3://{new_bucket(s3)}/ckpt"
        backend = S3BlobStore(root, url, cache, part_bytes=PART, orphan_grace_seconds=0)
    backend.prepare()
    yield backend


def staged(store: BlobStorage, data: bytes) -> tuple[Path, str]:
    """`data` written to a temp file as the ingest leaves it, and its digest."""
    digest = hashlib.sha256(data).hexdigest()
    path = store.tmp_dir / f"upload-{digest[:8]}-{len(data)}"
    path.write_bytes(data)
    return path, digest


def put(store: BlobStorage, data: bytes) -> str:
    path, digest = staged(store, data)
    assert store.put(path, digest) is True
    return digest


def test_put_stores_once_and_consumes_the_file(store: BlobStorage) -> None:
    path, digest = staged(store, b"weights" * 1000)
    assert not store.exists(digest)
    assert store.put(path, digest) is True
    assert not path.exists()
    assert store.exists(digest)
    assert store.size(digest) == 7000
    again, same = staged(store, b"weights" * 1000)
    assert store.put(again, same) is False, "identical content is deduplicated"
    assert not again.exists()
    assert list(store.iter_digests()) == [digest]


def test_missing_blob_is_not_found(store: BlobStorage) -> None:
    absent = "0" * 64
    assert not store.exists(absent)
    with pytest.raises(NotFound):
        store.size(absent)
    with pytest.raises((NotFound, FileNotFoundError)):
        store.local_path(absent).read_bytes()
    with pytest.raises(NotFound):
        b"".join(store.read(absent))
    store.delete(absent)  # deleting what is not there is no error


def test_not_a_digest_is_refused(store: BlobStorage) -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        store.exists("../../etc/passwd")


def test_delete_and_iterate(store: BlobStorage) -> None:
    digests = {put(store, f"blob {i}".encode()) for i in range(3)}
    assert set(store.iter_digests()) == digests
    victim = sorted(digests)[0]
    store.delete(victim)
    assert not store.exists(victim)
    assert set(store.iter_digests()) == digests - {victim}


def test_orphan_candidates_leave_out_referenced_blobs(store: BlobStorage) -> None:
    keep, drop = put(store, b"referenced"), put(store, b"orphan")
    assert store.orphan_candidates({keep}) == [drop]


def test_local_path_holds_the_bytes(store: BlobStorage) -> None:
    data = bytes(range(256)) * 100
    digest = put(store, data)
    path = store.local_path(digest)
    assert path.read_bytes() == data
    assert store.local_path(digest) == path


def test_read_streams_whole_and_ranges(store: BlobStorage) -> None:
    data = bytes(range(256)) * 10_000
    digest = put(store, data)
    assert b"".join(store.read(digest)) == data
    assert b"".join(store.read(digest, 1000, 1010)) == data[1000:1010]
    assert b"".join(store.read(digest, len(data) - 3)) == data[-3:]


def test_workdir_and_clear_tmp(store: BlobStorage) -> None:
    with store.workdir() as work:
        (work / "member").write_bytes(b"x")
        assert work.parent == store.tmp_dir
    assert not work.exists()
    (store.tmp_dir / "upload-interrupted").write_bytes(b"partial")
    assert store.clear_tmp() == 1
    assert list(store.tmp_dir.iterdir()) == []


# -- S3 only: layout, multipart, the verified cache ------------------------------------------


@pytest.fixture
def s3_store(s3: Any, tmp_path: Path) -> S3BlobStore:
    cache = BlobCache(tmp_path / "cache" / "blobs", 1 << 30)
    url = f"s3://{new_bucket(s3)}/a/b"
    store = S3BlobStore(tmp_path, url, cache, part_bytes=PART, orphan_grace_seconds=0)
    store.prepare()
    return store


def test_s3_layout_is_prefix_shard_digest(s3: Any, s3_store: S3BlobStore) -> None:
    digest = put(s3_store, b"layout")
    assert object_keys(s3, s3_store.bucket) == [f"a/b/{digest[:2]}/{digest}"]
    s3.put_object(Bucket=s3_store.bucket, Key="a/b/README", Body=b"not a blob")
    s3.put_object(Bucket=s3_store.bucket, Key="a/bc/" + "1" * 64, Body=b"another prefix")
    s3.put_object(Bucket=s3_store.bucket, Key=f"a/b/zz/{digest}", Body=b"wrong shard")
    assert list(s3_store.iter_digests()) == [digest]
    assert s3_store.orphan_candidates(set()) == [digest], "objects outside the layout stay"


def test_large_blob_is_uploaded_in_parts(s3: Any, s3_store: S3BlobStore) -> None:
    data = bytes(range(256)) * ((2 * PART + 1000) // 256)
    digest = put(s3_store, data)
    head = s3.head_object(Bucket=s3_store.bucket, Key=s3_store.key(digest))
    assert head["ETag"].strip('"').endswith("-3"), "three parts: a multipart upload"
    assert head["ContentLength"] == len(data)
    assert hashlib.sha256(s3_store.local_path(digest).read_bytes()).hexdigest() == digest


def test_corrupted_object_is_refused_by_the_cache(s3: Any, s3_store: S3BlobStore) -> None:
    digest = put(s3_store, b"the real bytes")
    s3.put_object(Bucket=s3_store.bucket, Key=s3_store.key(digest), Body=b"the real bytez")
    with pytest.raises(CorruptBlob, match=digest):
        s3_store.local_path(digest)
    assert [p for p in s3_store.cache.root.rglob("*") if p.is_file()] == []


def test_nothing_is_written_under_blobs(s3_store: S3BlobStore) -> None:
    s3_store.local_path(put(s3_store, b"cached"))
    assert not (s3_store.root / "blobs").exists()


def test_delete_drops_the_cached_copy(s3_store: S3BlobStore) -> None:
    digest = put(s3_store, b"cached then deleted")
    cached = s3_store.local_path(digest)
    s3_store.delete(digest)
    assert not cached.exists()


def test_young_orphans_survive_the_sweep(s3_store: S3BlobStore) -> None:
    put(s3_store, b"stored by another replica, not committed yet")
    s3_store.orphan_grace_seconds = 3600
    assert s3_store.orphan_candidates(set()) == []
