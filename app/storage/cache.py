"""A bounded local cache of remote blobs, for readers that need files (worker, diffs, generation).

A blob is downloaded to a partial file beside the cache, hashed while it arrives and linked into
place only when its sha256 matches: a cached file is always complete and correct, and once in
place it is never replaced. Several processes (the server, workers) may share the directory.
Beyond the byte budget the least recently used files go (a hit refreshes the file's mtime),
except pinned ones (app.storage.pins): a checkpoint's blobs stay pinned, in every process sharing
the directory, from materialising it until its model is loaded or its job ends. Pinned files may
hold the cache over its budget for that long; a checkpoint that alone needs more than the budget
is refused (`BlobCacheTooSmall`) before anything is downloaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from pathlib import Path

from app.errors import AppError, InsufficientStorage
from app.storage.base import check_digest
from app.storage.pins import Pin, evicting, pin

Download = Callable[[str], Iterable[bytes]]
PARTIAL = ".partial"
PARTIAL_GRACE_SECONDS = 3600
FETCH_ATTEMPTS = 3  # a download evicted before it could be pinned is fetched again


class CorruptBlob(AppError):
    """Bytes fetched from the object store do not hash to the digest they are stored under."""

    status = 502
    code = "blob_corrupted"


class BlobCacheTooSmall(InsufficientStorage):
    code = "blob_cache_too_small"


class BlobPins:
    """The blobs one checkpoint needs, pinned as they are fetched while `collecting()`.

    `need_bytes` (its distinct blobs' recorded sizes) is checked against the cache's budget
    before the first download.
    """

    def __init__(self, label: str, need_bytes: int) -> None:
        self.label = label
        self.need_bytes = need_bytes
        self._pins: dict[str, Pin] = {}

    @contextlib.contextmanager
    def collecting(self) -> Iterator[BlobPins]:
        """Blobs fetched in this thread inside the block are pinned here (released on error)."""
        token = _collecting.set(self)
        try:
            yield self
        except BaseException:
            self.release()
            raise
        finally:
            _collecting.reset(token)

    @property
    def digests(self) -> set[str]:
        return set(self._pins)

    def release(self) -> None:
        for held in self._pins.values():
            held.release()
        self._pins.clear()

    def require_room(self, budget_bytes: int) -> None:
        if self.need_bytes > budget_bytes:
            raise BlobCacheTooSmall(
                f"{self.label} needs {self.need_bytes} bytes of blob cache; "
                f"CKPT_BLOB_CACHE_BYTES is {budget_bytes}"
            )

    def add(self, sha256: str, held: Pin) -> None:
        previous = self._pins.setdefault(sha256, held)
        if previous is not held:
            held.release()


_collecting: ContextVar[BlobPins | None] = ContextVar("blob_pins", default=None)


class BlobCache:
    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.root / check_digest(sha256)[:2] / sha256

    def fetch(self, sha256: str, download: Download) -> Path:
        """The cached file for `sha256`, downloaded (once per process at a time) if absent.

        Inside `BlobPins.collecting()` the file stays pinned there; otherwise it is only
        protected from the eviction this fetch runs.
        """
        pins = _collecting.get()
        if pins is not None:
            pins.require_room(self.budget_bytes)
        path = self.path(sha256)
        held = self._pinned_copy(sha256, download, path)
        try:
            with contextlib.suppress(FileNotFoundError):  # deleted from the store meanwhile
                now = time.time_ns()  # not the kernel's coarse clock: keeps close uses ordered
                os.utime(path, ns=(now, now))
            self.evict()
        finally:
            if pins is None:
                held.release()
            else:
                pins.add(sha256, held)
        return path

    def evict(self) -> list[Path]:
        """Remove the least recently used unpinned files until the cache fits its budget.

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
                if not (file.name.endswith(PARTIAL) and stat.st_mtime > stale):
                    entries.append((stat.st_mtime_ns, stat.st_size, file))
        removed = []
        for _, size, file in sorted(entries):
            if total <= self.budget_bytes:
                break
            with evicting(file) as free:
                if free:
                    total -= size
                    removed.append(file)
        return removed

    def _pinned_copy(self, sha256: str, download: Download, path: Path) -> Pin:
        for _ in range(FETCH_ATTEMPTS):
            with self._lock(sha256):
                held = pin(path)
                if held is None:
                    self._download(sha256, download, path)
                    held = pin(path)
            if held is not None:
                return held
        raise InsufficientStorage(
            f"blob {sha256} was evicted from the blob cache {FETCH_ATTEMPTS} times before it "
            "could be used: the cache is too full of blobs in use; raise CKPT_BLOB_CACHE_BYTES"
        )

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
            # A link, never a replace: a file another process already put there may be pinned.
            with contextlib.suppress(FileExistsError):
                os.link(partial, path)
        finally:
            partial.unlink(missing_ok=True)

    def _lock(self, sha256: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(sha256, threading.Lock())
