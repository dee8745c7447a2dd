"""The blob storage contract: content-addressed blobs keyed by sha256, wherever they live.

Scratch space is always local: uploads spool into `tmp/` and ingest works in private `workdir`s
under the data dir, whichever backend keeps the blobs (`BlobStore` on the local disk,
`S3BlobStore` in S3-compatible object storage).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_digest(sha256: str) -> str:
    if not SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class BlobStorage(ABC):
    """`orphan_grace_seconds`: unreferenced blobs and temp files younger than this survive the
    startup sweep, because with several API processes sharing the storage they may belong to an
    upload another process has not committed yet (0: one process owns the storage)."""

    def __init__(self, root: Path, *, orphan_grace_seconds: float = 0.0) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.orphan_grace_seconds = orphan_grace_seconds

    # -- the blobs ------------------------------------------------------------------------------

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def size(self, sha256: str) -> int:
        """The blob's size in bytes; NotFound when it is missing."""

    @abstractmethod
    def put(self, src: Path, sha256: str) -> bool:
        """Move the finished file `src` (already hashed by the caller) into the store.

        Returns True when the blob is new, False when identical content was already stored;
        `src` is gone afterwards either way.
        """

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the blob; a missing blob is not an error."""

    @abstractmethod
    def iter_digests(self) -> Iterator[str]: ...

    @abstractmethod
    def local_path(self, sha256: str) -> Path:
        """A local file holding the blob, for readers that need one (worker, diffs, generation).

        A remote backend raises NotFound for a missing blob and CorruptBlob when the fetched
        bytes fail their sha256; the local one returns the blob's path, absent then.
        """

    @abstractmethod
    def served_path(self, sha256: str) -> Path | None:
        """The file to send a client as is, when the backend has one without copying."""

    @abstractmethod
    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes `start` to `end` (exclusive; None: the end) in chunks, for streaming."""

    # -- local scratch space and maintenance ----------------------------------------------------

    def prepare(self) -> None:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def workdir(self, prefix: str = "ingest-") -> Iterator[Path]:
        """A fresh private directory under tmp/, removed with everything in it on exit."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp_dir))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def clear_tmp(self) -> int:
        """Remove leftovers of interrupted uploads (older than the grace period); at startup."""
        removed = 0
        cutoff = time.time() - self.orphan_grace_seconds
        for entry in self.tmp_dir.iterdir():
            if self.orphan_grace_seconds and _last_written(entry) >= cutoff:
                continue  # maybe another process's upload in flight
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        return removed

    def sweepable_digests(self) -> Iterator[str]:
        """The blobs a garbage collection may remove when unreferenced: all of them here."""
        return self.iter_digests()

    def orphan_candidates(self, referenced: set[str]) -> list[str]:
        """The sweepable blobs outside `referenced`: what a startup sweep offers the collector
        (app.storage.leases), which deletes each only if still unreferenced and unleased."""
        return [digest for digest in self.sweepable_digests() if digest not in referenced]


def _last_written(entry: Path) -> float:
    """The newest modification time of a temp file, or of a temp directory and what it holds."""
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for path in entry.rglob("*"):
            newest = max(newest, path.lstat().st_mtime)
    return newest
