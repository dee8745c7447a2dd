"""Numbers derived from a checkpoint's tensors: parameter counts and the weights digest."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

from app.ingest.types import TensorRecord


def weights_digest(tensors: Iterable[TensorRecord]) -> str:
    """One sha256 over the sorted (name, dtype, shape, sha256 of raw bytes) of every tensor.

    Hashing each tensor's own digest rather than its bytes again makes this a Merkle root: it
    changes exactly when any name, dtype, shape or byte changes, and costs nothing extra since
    the per-tensor hashes are computed anyway. The format the weights arrived in plays no part.
    """
    digest = hashlib.sha256()
    for tensor in sorted(tensors, key=lambda t: t.name):
        line = [tensor.name, tensor.dtype, list(tensor.shape), tensor.sha256]
        digest.update(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


def parameter_stats(tensors: list[TensorRecord]) -> dict[str, Any]:
    by_dtype: Counter[str] = Counter()
    for tensor in tensors:
        by_dtype[tensor.dtype] += tensor.numel
    total = sum(by_dtype.values())
    nbytes = sum(t.nbytes for t in tensors)
    return {
        "parameter_count": total,
        "parameters_by_dtype": dict(sorted(by_dtype.items())),
        "tensor_count": len(tensors),
        "bytes_per_parameter": nbytes / total if total else None,
    }
