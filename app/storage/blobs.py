"""Local content-addressed blob store: `blobs/ab/abcdef...` keyed by sha256.

Blobs arrive as finished temp files inside the same filesystem (`tmp/`), are fsynced and renamed
into place, so a blob path either holds the complete content or does not exist.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from app.errors import NotFound

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_dir = root / "blobs"
        self.tmp_dir = root / "tmp"
        # Held while a change makes blobs referenced or unreferenced (store + commit, or delete +
        # collect), so garbage collection never removes a blob a concurrent upload is adopting.
        self.reference_lock = threading.RLock()

    def prepare(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.blob_dir / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"blob {sha256} is missing from the store") from exc

    def put(self, src: Path, sha256: str) -> bool:
        """Move the finished file `src` (already hashed by the caller) into the store.

        Returns True when the blob is new, False when identical content was already stored
        (then `src` is simply removed).
        """
        dest = self.path(sha256)
        if dest.exists():
            src.unlink()
            os.utime(dest)
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fsync_file(src)
        os.replace(src, dest)
        _fsync_dir(dest.parent)
        return True

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha256).unlink()

    def iter_digests(self) -> Iterator[str]:
        for shard in self.blob_dir.iterdir():
            for blob in shard.iterdir():
                if _SHA256.match(blob.name):
                    yield blob.name

    @contextlib.contextmanager
    def workdir(self, prefix: str = "ingest-") -> Iterator[Path]:
        """A fresh private directory under tmp/, removed with everything in it on exit."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp_dir))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def clear_tmp(self) -> int:
        """Remove leftovers of interrupted uploads; only safe at startup."""
        removed = 0
        for entry in self.tmp_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed

    def collect_garbage(self, referenced: set[str]) -> list[str]:
        with self.reference_lock:
            orphans = [digest for digest in self.iter_digests() if digest not in referenced]
            for digest in orphans:
                self.delete(digest)
        return orphans


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
