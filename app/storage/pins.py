"""Pins across processes: a shared flock(2) on a file says "in use", eviction skips it.

A pin is a shared lock on an open file. Eviction takes an exclusive non-blocking lock, skips a
file it cannot lock, and unlinks the file while it still holds the lock. The lock is the open
file's, not the path's: a pinner checks after locking that the path still names the file it
locked, and otherwise (an eviction won the race, or a new file took the name) tries again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class Pin:
    """A shared lock held on `path` until `release()` (or the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def pin(path: Path) -> Pin | None:
    """A pin on the file at `path`; None when there is no file there."""
    return _pin(path, os.O_RDONLY | os.O_CLOEXEC)


def hold(lock: Path) -> Pin:
    """A pin on the lock file `lock`, created empty when absent."""
    held = _pin(lock, os.O_RDONLY | os.O_CLOEXEC | os.O_CREAT)
    assert held is not None, "O_CREAT always finds a file"
    return held


@contextlib.contextmanager
def evicting(path: Path, *, create: bool = False) -> Iterator[bool]:
    """Whether nobody pins `path` (made empty first when `create`): while the block runs with
    True, an exclusive lock keeps pinners out, and `path` is unlinked when it ends."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        yield False
        return
    try:
        free = _try_exclusive(fd) and _names(path, fd)
        yield free
        if free:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


def is_pinned(path: Path) -> bool:
    """Whether some open file holds a lock on `path` now (for tests and diagnostics)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return not _try_exclusive(fd)
    finally:
        os.close(fd)


def _pin(path: Path, flags: int) -> Pin | None:
    while True:
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while an eviction unlinks this very file
        if _names(path, fd):
            return Pin(path, fd)
        os.close(fd)


def _try_exclusive(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _names(path: Path, fd: int) -> bool:
    """Whether `path` still names the open file `fd`."""
    with contextlib.suppress(FileNotFoundError):
        held, named = os.fstat(fd), os.stat(path)
        return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
    return False
