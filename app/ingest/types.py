"""Plain data produced by ingestion: what a checkpoint is made of, before it is stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CheckpointFormat = Literal["hf_zip", "safetensors", "torch"]


@dataclass(frozen=True)
class IngestLimits:
    """Caps applied to every upload before anything large is allocated."""

    max_zip_entries: int = 10_000
    max_uncompressed_bytes: int = 64 << 30
    max_entry_ratio: float = 200.0
    ratio_check_min_bytes: int = 1 << 20
    max_header_bytes: int = 100 << 20
    max_tensors: int = 100_000
    torch_memory_bytes: int = 8 << 30
    torch_cpu_seconds: int = 600


@dataclass(frozen=True)
class TensorRecord:
    """One tensor as stored: `file` is the stored safetensors file that holds it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    numel: int
    nbytes: int
    sha256: str
    file: str


@dataclass(frozen=True)
class FileRecord:
    """One stored file: `path` is relative to the checkpoint folder.

    `origin` is "member" for a file that came out of the upload unchanged (an archive member or the
    bare upload itself) and "derived" for one the service wrote (safetensors converted from a
    pickle, a training-state summary).
    """

    path: str
    size: int
    sha256: str
    origin: Literal["member", "derived"] = "member"
