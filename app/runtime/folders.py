"""Materialised checkpoint folders, `<data>/cache/checkpoints/<id>/`, bounded by their count.

A folder holds only links to blobs (a few hundred bytes of inodes): the bytes they reach are
bounded by the blob cache (CKPT_BLOB_CACHE_BYTES) or are the local store itself, so the folders
are bounded by count (CKPT_MODEL_FOLDER_CACHE_ENTRIES), only so that they do not pile up over
months. A folder in use by a running job or a model being loaded, in any process sharing the
data dir, is pinned through its lock file `<id>.lock` beside it (app.storage.pins), whose mtime
records the last use; eviction removes the least recently used folders nobody pins. Removing
renames the folder aside first (one atomic step, so `materialize` elsewhere sees the whole
folder or none); a process that already opened its files keeps reading them (POSIX).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path

from app.storage.pins import Pin, evicting, hold

DEFAULT_MAX_ENTRIES = 256
LOCK = ".lock"


def hold_folder(root: Path, checkpoint_id: str) -> Pin:
    """Pin the folder of `checkpoint_id` (present or about to be built) and mark it used now."""
    root.mkdir(parents=True, exist_ok=True)
    lock = _lock_path(root, checkpoint_id)
    held = hold(lock)
    now = time.time_ns()  # not the kernel's coarse clock: uses a millisecond apart stay ordered
    os.utime(lock, ns=(now, now))
    return held


def release_unbuilt(root: Path, checkpoint_id: str, held: Pin) -> None:
    """Release a folder that could not be built; its lock file goes unless it is still used."""
    held.release()
    if not (root / checkpoint_id).is_dir():
        with evicting(_lock_path(root, checkpoint_id)):
            pass


def remove_folder(root: Path, checkpoint_id: str) -> bool:
    """Remove a folder unless it is in use; False when it is in use or there was none."""
    if not _lock_path(root, checkpoint_id).exists() and not (root / checkpoint_id).is_dir():
        return False
    with evicting(_lock_path(root, checkpoint_id), create=True) as free:
        return free and _remove_aside(root, checkpoint_id)


def evict_least_recently_used(root: Path, max_entries: int) -> list[str]:
    """Remove the least recently used folders nobody pins until at most `max_entries` remain."""
    entries = _entries(root)
    excess = len(entries) - max_entries
    removed: list[str] = []
    for checkpoint_id in sorted(entries, key=lambda name: _last_used(root, name)):
        if len(removed) >= excess:
            break
        with evicting(_lock_path(root, checkpoint_id), create=True) as free:
            if free:
                _remove_aside(root, checkpoint_id)
                removed.append(checkpoint_id)
    return removed


def _lock_path(root: Path, checkpoint_id: str) -> Path:
    return root / f"{checkpoint_id}{LOCK}"


def _entries(root: Path) -> set[str]:
    """Folders and lock files by checkpoint id; hidden names are staging or removal leftovers."""
    names = set()
    for path in root.iterdir():
        if path.name.startswith("."):
            continue
        if path.name.endswith(LOCK) and not path.is_dir():
            names.add(path.name.removesuffix(LOCK))
        elif path.is_dir() and not path.is_symlink():
            names.add(path.name)
    return names


def _last_used(root: Path, checkpoint_id: str) -> int:
    """The lock file's mtime (stamped on every use); a folder without one, its own."""
    for path in (_lock_path(root, checkpoint_id), root / checkpoint_id):
        with contextlib.suppress(FileNotFoundError):
            return path.stat().st_mtime_ns
    return 0


def _remove_aside(root: Path, checkpoint_id: str) -> bool:
    aside = root / f".{checkpoint_id}.deleted.{uuid.uuid4().hex[:8]}"
    try:
        (root / checkpoint_id).rename(aside)
    except FileNotFoundError:
        return False
    shutil.rmtree(aside, ignore_errors=True)
    return True
