"""BlobCache: verified downloads, least recently used files evicted beyond the budget."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.storage.cache import BlobCache, CorruptBlob

BLOBS = {hashlib.sha256(data).hexdigest(): data for data in (b"a" * 100, b"b" * 100, b"c" * 100)}
A, B, C = BLOBS


class Origin:
    """The remote side: counts downloads, can serve wrong bytes."""

    def __init__(self) -> None:
        self.downloads: list[str] = []
        self.tamper = False

    def __call__(self, sha256: str) -> Iterator[bytes]:
        self.downloads.append(sha256)
        data = BLOBS[sha256]
        yield data[:40]
        yield (b"X" if self.tamper else data[40:41]) + data[41:]


def cached(cache: BlobCache) -> set[str]:
    return {p.name for p in cache.root.rglob("*") if p.is_file()}


def age(path: Path, seconds: float) -> None:
    stamp = path.stat().st_mtime - seconds
    os.utime(path, (stamp, stamp))


def test_fetch_downloads_once_then_hits(tmp_path: Path) -> None:
    cache, origin = BlobCache(tmp_path, 1000), Origin()
    first = cache.fetch(A, origin)
    assert first.read_bytes() == BLOBS[A]
    assert cache.fetch(A, origin) == first
    assert origin.downloads == [A]


def test_least_recently_used_goes_beyond_the_budget(tmp_path: Path) -> None:
    cache, origin = BlobCache(tmp_path, 250), Origin()
    age(cache.fetch(A, origin), 20)
    age(cache.fetch(B, origin), 10)
    cache.fetch(A, origin)  # a hit makes A the most recent
    cache.fetch(C, origin)
    assert cached(cache) == {A, C}
    assert origin.downloads == [A, B, C]


def test_a_blob_larger_than_the_budget_still_arrives(tmp_path: Path) -> None:
    cache, origin = BlobCache(tmp_path, 50), Origin()
    age(cache.fetch(A, origin), 10)
    assert cache.fetch(B, origin).read_bytes() == BLOBS[B]
    assert cached(cache) == {B}


def test_wrong_bytes_leave_nothing_behind(tmp_path: Path) -> None:
    cache, origin = BlobCache(tmp_path, 1000), Origin()
    origin.tamper = True
    with pytest.raises(CorruptBlob) as raised:
        cache.fetch(A, origin)
    assert raised.value.code == "blob_corrupted"
    assert cached(cache) == set()
    origin.tamper = False
    assert cache.fetch(A, origin).read_bytes() == BLOBS[A]


def test_concurrent_fetches_download_once(tmp_path: Path) -> None:
    cache, origin = BlobCache(tmp_path, 1000), Origin()
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(cache.fetch(A, origin))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert origin.downloads == [A]
    assert len(set(paths)) == 1


def test_partial_downloads_are_left_alone_while_recent(tmp_path: Path) -> None:
    cache, origin = BlobCache(tmp_path, 150), Origin()
    shard = tmp_path / "ff"
    shard.mkdir()
    writing, abandoned = shard / ".ff.1.partial", shard / ".ff.2.partial"
    writing.write_bytes(b"w" * 10)
    abandoned.write_bytes(b"w" * 10)
    age(abandoned, 2 * 3600)
    age(cache.fetch(A, origin), 10)
    cache.fetch(B, origin)
    assert not abandoned.exists()
    assert writing.exists()
    assert cached(cache) == {B, writing.name}
