"""CKPT_STORAGE_URL picks the backend; a bad URL or an unreachable store says so."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.errors import ServiceUnavailable
from app.storage.blobs import BlobStore
from app.storage.cache import BlobCache
from app.storage.factory import open_blob_store
from app.storage.s3 import MissingBucket, S3BlobStore
from tests.live_server import free_port


def test_default_is_the_data_dir(tmp_path: Path) -> None:
    store = open_blob_store(Settings(data_dir=tmp_path))
    assert isinstance(store, BlobStore)
    assert store.blob_dir == tmp_path / "blobs"


def test_file_url_names_the_blob_root(tmp_path: Path) -> None:
    store = open_blob_store(Settings(data_dir=tmp_path, storage_url=f"file://{tmp_path}/elsewhere"))
    assert isinstance(store, BlobStore)
    assert store.blob_dir == tmp_path / "elsewhere" / "blobs"


def test_s3_url_gives_bucket_prefix_and_cache(tmp_path: Path, s3_endpoint: str) -> None:
    settings = Settings(data_dir=tmp_path, storage_url="s3://models/team/a/", blob_cache_bytes=7)
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix) == ("models", "team/a")
    assert store.key("ab" + "0" * 62) == "team/a/ab/ab" + "0" * 62
    assert store.cache.root == tmp_path / "cache" / "blobs"
    assert store.cache.budget_bytes == 7


@pytest.mark.parametrize("url", ["gs://bucket/x", "/var/blobs", "bucket/prefix"])
def test_unknown_schemes_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="file:///dir or s3://bucket/prefix"):
        Settings(storage_url=url)


def test_s3_url_without_bucket_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an s3://bucket/prefix URL"):
        open_blob_store(Settings(data_dir=tmp_path, storage_url="s3:///prefix"))


def test_unreachable_object_store_is_503(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    store = S3BlobStore(tmp_path, "s3://gone/x", BlobCache(tmp_path / "cache", 1 << 20))
    with pytest.raises(ServiceUnavailable, match="'gone' is unreachable") as raised:
        store.exists("0" * 64)
    assert raised.value.status == 503


def test_a_missing_bucket_stops_startup(tmp_path: Path, s3_endpoint: str) -> None:
    store = S3BlobStore(tmp_path, "s3://never-created/x", BlobCache(tmp_path / "cache", 1 << 20))
    with pytest.raises(MissingBucket, match="'never-created' does not exist"):
        store.prepare()
