"""Pins held by another process: a real Python child that takes them and keeps them until told."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from pathlib import Path
from app.storage.pins import pin
from app.runtime.folders import hold_folder
held = [{take}]
assert all(h is not None for h in held), "nothing to pin"
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def _child(take: str) -> Iterator[None]:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(take=take)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        assert process.stdout.readline() == "held\n"
        yield
    finally:
        process.stdin.close()
        assert process.wait(timeout=30) == 0


def blobs_pinned_elsewhere(*paths: Path) -> AbstractContextManager[None]:
    """Another process pins these cache files (as its materialise would) while inside."""
    return _child(", ".join(f"pin(Path({str(p)!r}))" for p in paths))


def folder_held_elsewhere(root: Path, checkpoint_id: str) -> AbstractContextManager[None]:
    """Another process holds this materialised folder in use while inside."""
    return _child(f"hold_folder(Path({str(root)!r}), {checkpoint_id!r})")
