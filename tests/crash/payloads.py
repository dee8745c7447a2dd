"""Small uploads built in memory: bare safetensors files and zips of model folders."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from safetensors.numpy import save


def safetensors_bytes(seed: int, numel: int = 16) -> bytes:
    """A valid safetensors file of two float32 tensors, different for every seed."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(numel, dtype=np.float32)
    return save({"layer.weight": weights, "layer.bias": weights[:4].copy()})


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def model_zip(seed: int) -> bytes:
    return zip_bytes(
        {
            "model/model.safetensors": safetensors_bytes(seed),
            "model/version.txt": f"seed {seed}\n".encode(),
        }
    )
