"""The startup sweep with a grace period: what another process may still be uploading stays."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from app.storage.blobs import BlobStore


def stored(store: BlobStore, tmp: Path, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    source = tmp / f"{digest}.part"
    source.write_bytes(content)
    store.put(source, digest)
    return digest


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)


def test_young_orphans_survive_and_old_ones_go(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data", orphan_grace_seconds=60)
    store.prepare()
    old, _young = (stored(store, tmp_path, data) for data in (b"old", b"young"))
    age(store.local_path(old), 120)
    assert store.orphan_candidates(referenced=set()) == [old]


def test_adopting_a_blob_makes_it_young_again(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data", orphan_grace_seconds=60)
    store.prepare()
    digest = stored(store, tmp_path, b"shared")
    age(store.local_path(digest), 120)
    stored(store, tmp_path, b"shared")  # another upload of the same bytes adopts it
    assert store.orphan_candidates(referenced=set()) == []


def test_temp_files_being_written_survive(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data", orphan_grace_seconds=60)
    store.prepare()
    stale = store.tmp_dir / "ingest-stale"
    busy = store.tmp_dir / "ingest-busy"
    for folder in (stale, busy):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
    for path in (stale / "model.safetensors", stale, busy):
        age(path, 120)  # busy: an old folder whose file is still being written
    assert store.clear_tmp() == 1
    assert busy.exists() and not stale.exists()


def test_without_grace_everything_unreferenced_goes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    store.prepare()
    digest = stored(store, tmp_path, b"fresh")
    (store.tmp_dir / "ingest-fresh").mkdir()
    assert store.orphan_candidates(referenced=set()) == [digest]
    assert store.clear_tmp() == 1
