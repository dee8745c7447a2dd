"""A bounded local cache of remote blobs, for readers that need files (worker, diffs, generation).

A blob is downloaded to a partial file beside the cache, hashed while it arrives and renamed into
place only when its sha256 matches: a cached file is always complete and correct. Several
processes (the server, workers) may share the directory; the rename makes their races harmless.
Beyond the byte budget the least recently used files go (a hit refreshes the file's mtime); the
blob just fetched always stays, however large.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from app.errors import AppError
from app.storage.base import check_digest

Download = Callable[[str], Iterable[bytes]]
PARTIAL = ".partial"
PARTIAL_GRACE_SECONDS = 3600


class CorruptBlob(AppError):
    """Bytes fetched from the object store do not hash to the digest they are stored under."""

    status = 502
    code = "blob_corrupted"


class BlobCache:
    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.root / check_digest(sha256)[:2] / sha256

    def fetch(self, sha256: str, download: Download) -> Path:
        """The cached file for `sha256`, downloaded (once per process at a time) if absent."""
        path = self.path(sha256)
        with self._lock(sha256):
            if path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)
                    return path
            self._download(sha256, download, path)
        self.evict(keep=path)
        return path

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Remove the least recently used files until the cache fits its budget.

        Partial downloads count towards the budget but are left alone while recent: another
        process may still be writing them.
        """
        entries, total = [], 0
        stale = time.time() - PARTIAL_GRACE_SECONDS
        for file in self.root.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                stat = file.stat()
                if not file.is_file():
                    continue
                total += stat.st_size
                writing = file.name.endswith(PARTIAL) and stat.st_mtime > stale
                if file != keep and not writing:
                    entries.append((stat.st_mtime, stat.st_size, file))
        removed = []
        for _, size, file in sorted(entries):
            if total <= self.budget_bytes:
                break
            file.unlink(missing_ok=True)
            total -= size
            removed.append(file)
        return removed

    def _download(self, sha256: str, download: Download, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.parent / f".{sha256}.{uuid.uuid4().hex}{PARTIAL}"
        digest = hashlib.sha256()
        try:
            with partial.open("wb") as out:
                for chunk in download(sha256):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != sha256:
                raise CorruptBlob(
                    f"blob {sha256} in the object store is corrupted: "
                    f"its bytes hash to {digest.hexdigest()}"
                )
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def _lock(self, sha256: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(sha256, threading.Lock())
