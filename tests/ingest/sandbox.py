"""Helpers for tests that watch the torch loader sandbox from outside."""

from __future__ import annotations

from pathlib import Path

from tests.hostile.builders import torch_bytes


def slow_torch_bytes(tensors: int, stamp: int = 0) -> bytes:
    """A torch.save file of `tensors` 4-element views of one storage: legitimately slow to
    unpickle (30,000 take the sandbox seconds). `stamp` makes the bytes distinct."""
    import torch

    storage = torch.arange(tensors * 4, dtype=torch.float32)
    storage[0] = stamp
    return torch_bytes({f"layer{i}.weight": storage[4 * i : 4 * i + 4] for i in range(tensors)})


def loader_children(parent: int) -> list[int]:
    """Pids of the running sandboxed loaders whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"app.ingest.torch_child" in cmdline:
            found.append(int(entry.name))
    return found
