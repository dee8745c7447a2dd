"""One way to serve or verify a checkpoint in another dtype than it was stored in."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch

from app.records import CheckpointRecord
from app.runtime.loading import StoredCheckpoint

CastDtype = Literal["bfloat16", "float16", "float32"]


def cast_parameters(model: Any, dtype: str) -> Any:
    """The model with its floating parameters in `dtype` ("stored": as they are). Buffers keep
    theirs, as `from_pretrained(dtype=...)` leaves them (rotary frequencies stay float32)."""
    if dtype != "stored":
        target = getattr(torch, dtype)
        for parameter in model.parameters():
            if parameter.is_floating_point():
                parameter.data = parameter.data.to(target)
    return model


class CastCheckpoint(StoredCheckpoint):
    """The same stored weights, loaded on their own and cast to `dtype` as serving casts them.

    Its record says its parameters are in `dtype`, so the tolerances are those of that pair.
    """

    def __init__(self, view: CheckpointRecord, folder: Path, device: torch.device, dtype: str):
        relabeled = dataclasses.replace(view, parameters_by_dtype={dtype: view.parameter_count})
        super().__init__(relabeled, folder, device)
        self.cast_dtype = dtype

    def model(self) -> Any:
        if self._model is None:
            self._model = cast_parameters(super().model(), self.cast_dtype)
        return self._model
