"""Local content-addressed blob store: `blobs/ab/abcdef...` keyed by sha256.

Blobs arrive as finished temp files inside the same filesystem (`tmp/`), are fsynced and renamed
into place, so a blob path either holds the complete content or does not exist.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

from app import faults
from app.errors import InsufficientStorage, NotFound
from app.hashing import CHUNK_BYTES
from app.storage.base import SHA256, BlobStorage, check_digest

_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def out_of_space_is_507(doing: str) -> Iterator[None]:
    """Turn a full disk (or quota) met while `doing` something into a 507 for the client."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _OUT_OF_SPACE:
            raise InsufficientStorage(f"the server ran out of disk space {doing}") from exc
        raise


class BlobStore(BlobStorage):
    """Blobs on the local disk under `root/blobs`; temp files under `root/tmp`."""

    def __init__(self, root: Path, *, orphan_grace_seconds: float = 0.0) -> None:
        super().__init__(root, orphan_grace_seconds=orphan_grace_seconds)
        self.blob_dir = root / "blobs"

    def prepare(self) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        super().prepare()

    def local_path(self, sha256: str) -> Path:
        return self.blob_dir / check_digest(sha256)[:2] / sha256

    def sweepable_digests(self) -> Iterator[str]:
        """Blobs older than the grace period (`put` refreshes a blob's time when an upload adopts
        it, so a blob another process is about to commit is never among them)."""
        if not self.orphan_grace_seconds:
            return self.iter_digests()
        cutoff = time.time() - self.orphan_grace_seconds
        return (d for d in self.iter_digests() if self._mtime(d) < cutoff)

    def _mtime(self, sha256: str) -> float:
        try:
            return self.local_path(sha256).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def served_path(self, sha256: str) -> Path | None:
        return self.local_path(sha256)

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        try:
            handle = self.local_path(sha256).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"blob {sha256} is missing from the store") from exc
        with handle:
            handle.seek(start)
            left = None if end is None else end - start
            while left is None or left > 0:
                chunk = handle.read(CHUNK_BYTES if left is None else min(CHUNK_BYTES, left))
                if not chunk:
                    return
                left = None if left is None else left - len(chunk)
                yield chunk

    def exists(self, sha256: str) -> bool:
        return self.local_path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self.local_path(sha256).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"blob {sha256} is missing from the store") from exc

    def put(self, src: Path, sha256: str) -> bool:
        dest = self.local_path(sha256)
        if dest.exists():
            src.unlink()
            os.utime(dest)
            return False
        with out_of_space_is_507("while storing the upload"):
            faults.before_write("blob")
            faults.rendezvous("blob", self.root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _fsync_file(src)
            os.replace(src, dest)
            _fsync_dir(dest.parent)
        return True

    def delete(self, sha256: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.local_path(sha256).unlink()

    def iter_digests(self) -> Iterator[str]:
        for shard in self.blob_dir.iterdir():
            for blob in shard.iterdir():
                if SHA256.match(blob.name):
                    yield blob.name


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
