"""Test-only fault injection for the crash-safety tests (tests/crash/). Off unless its variables
are set; then one environment lookup per call site. Both take `name:n[,name:n]` (n defaults
to 1): only the n-th call reaching that name in this process is hit, the others pass.

- `CKPT_FAULT_POINT=after_blobs|after_commit[:n]`: the upload that reaches that point writes
  `<data dir>/fault-<point>` and then blocks for good, so that a test can SIGKILL the server at
  exactly that point of an upload.
- `CKPT_FAULT_ENOSPC=spool|blob[:n]`: that write fails with ENOSPC, as on a full disk
  (`spool`: the upload streamed to tmp/, after writing half of the buffer; `blob`: a blob
  being placed in the store).
- `CKPT_FAULT_RENDEZVOUS=blob:n`: the first n blob transfers into the store (in all the
  processes sharing the data dir) wait for each other, up to RENDEZVOUS_SECONDS: each writes
  `<data dir>/rendezvous-blob-<pid>-<k>`, holding "met" once n were in flight together or
  "alone" when it gave up waiting, so that a test sees whether they overlapped.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import BinaryIO

POINT_ENV = "CKPT_FAULT_POINT"
ENOSPC_ENV = "CKPT_FAULT_ENOSPC"
RENDEZVOUS_ENV = "CKPT_FAULT_RENDEZVOUS"
RENDEZVOUS_SECONDS = 20.0

_calls: Counter[str] = Counter()
_calls_lock = threading.Lock()


def marker(data_dir: Path, point: str) -> Path:
    return data_dir / f"fault-{point}"


def stop_here(point: str, data_dir: Path) -> None:
    """Block forever at `point` when CKPT_FAULT_POINT names it (after writing the marker)."""
    armed = os.environ.get(POINT_ENV)
    if not armed or not _is_hit(point, armed):
        return
    marker(data_dir, point).write_text(str(os.getpid()))
    while True:
        time.sleep(3600)


def before_write(site: str, file: BinaryIO | None = None, data: bytes = b"") -> None:
    """Raise ENOSPC when this is the write at `site` that CKPT_FAULT_ENOSPC says fails.

    With `file` and `data`, half of `data` is written first: a disk that fills mid-write.
    """
    armed = os.environ.get(ENOSPC_ENV)
    if not armed or not _is_hit(site, armed):
        return
    if file is not None:
        file.write(data[: len(data) // 2])
        file.flush()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"fault injected at {site}")


def rendezvous(site: str, data_dir: Path) -> None:
    """Wait for the other transfers at `site` when CKPT_FAULT_RENDEZVOUS names it (see above)."""
    armed = os.environ.get(RENDEZVOUS_ENV)
    site_name, _, count = (armed or "").partition(":")
    if site_name != site:
        return
    parties = int(count or 2)
    pattern = f"rendezvous-{site}-*"
    if len(list(data_dir.glob(pattern))) >= parties:
        return
    with _calls_lock:
        _calls[f"rendezvous-{site}"] += 1
        mine = data_dir / f"rendezvous-{site}-{os.getpid()}-{_calls[f'rendezvous-{site}']}"
    mine.write_text("waiting")
    deadline = time.monotonic() + RENDEZVOUS_SECONDS
    while len(list(data_dir.glob(pattern))) < parties:
        if time.monotonic() > deadline:
            mine.write_text("alone")
            return
        time.sleep(0.02)
    mine.write_text("met")


def _is_hit(name: str, armed: str) -> bool:
    wanted = {
        armed_name: int(count or 1)
        for armed_name, _, count in (part.strip().partition(":") for part in armed.split(","))
    }
    if name not in wanted:
        return False
    with _calls_lock:
        _calls[name] += 1
        return _calls[name] == wanted[name]
