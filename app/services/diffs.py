"""Tensor-by-tensor comparison of two stored checkpoints, without running either model.

Tensors whose recorded sha256 match are identical without reading a byte; the others are read
one pair at a time through safetensors (memory-mapped), so two 500 MB checkpoints never sit in
memory together.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors import safe_open

from app.db.engine import Database
from app.db.repositories import CheckpointRepository
from app.services.views import TensorView
from app.storage.blobs import BlobStore


class TensorDiff(BaseModel):
    name: str
    status: str  # identical | changed | shape_changed | dtype_changed | only_in_a | only_in_b
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    frobenius_delta: float | None = None
    max_abs_diff: float | None = None
    relative_change: float | None = None


class CheckpointDiff(BaseModel):
    a: str
    b: str
    summary: dict[str, int]
    identical_weights: bool
    tensors: list[TensorDiff]


class DiffService:
    def __init__(self, db: Database, store: BlobStore) -> None:
        self.db = db
        self.store = store

    def diff(self, ref_a: str, ref_b: str) -> CheckpointDiff:
        side_a, side_b = self._side(ref_a), self._side(ref_b)
        with ExitStack() as stack:
            open_a = _Opener(stack, self.store, side_a)
            open_b = _Opener(stack, self.store, side_b)
            rows = [
                _compare(name, side_a.tensors.get(name), side_b.tensors.get(name), open_a, open_b)
                for name in sorted(side_a.tensors.keys() | side_b.tensors.keys())
            ]
        summary: dict[str, int] = {}
        for row in rows:
            summary[row.status] = summary.get(row.status, 0) + 1
        return CheckpointDiff(
            a=side_a.id,
            b=side_b.id,
            summary=summary,
            identical_weights=all(row.status == "identical" for row in rows),
            tensors=rows,
        )

    def _side(self, ref: str) -> _Side:
        with self.db.reading() as session:
            repo = CheckpointRepository(session)
            row = repo.require(ref)
            files = {f.path: f.sha256 for f in row.files}
            tensors = {t.name: TensorView.of(t) for t in repo.tensors(row.id)}
            return _Side(row.id, files, tensors)


class _Side:
    def __init__(self, checkpoint_id: str, files: dict[str, str], tensors: dict[str, TensorView]):
        self.id = checkpoint_id
        self.files = files
        self.tensors = tensors


class _Opener:
    """Opens each safetensors file of one side once, on first use."""

    def __init__(self, stack: ExitStack, store: BlobStore, side: _Side) -> None:
        self.stack, self.store, self.side = stack, store, side
        self.handles: dict[str, Any] = {}

    def tensor(self, view: TensorView) -> torch.Tensor:
        if view.file not in self.handles:
            path: Path = self.store.path(self.side.files[view.file])
            self.handles[view.file] = self.stack.enter_context(safe_open(str(path), "pt"))
        tensor: torch.Tensor = self.handles[view.file].get_tensor(view.name)
        return tensor


def _compare(
    name: str, a: TensorView | None, b: TensorView | None, open_a: _Opener, open_b: _Opener
) -> TensorDiff:
    if a is None or b is None:
        present = a or b
        assert present is not None
        status = "only_in_b" if a is None else "only_in_a"
        return TensorDiff(
            name=name,
            status=status,
            dtype_a=a and a.dtype,
            dtype_b=b and b.dtype,
            shape_a=a and a.shape,
            shape_b=b and b.shape,
        )
    base = TensorDiff(
        name=name,
        status="identical",
        dtype_a=a.dtype,
        dtype_b=b.dtype,
        shape_a=a.shape,
        shape_b=b.shape,
    )
    if a.shape != b.shape:
        return base.model_copy(update={"status": "shape_changed"})
    if a.dtype != b.dtype:
        return base.model_copy(update={"status": "dtype_changed"})
    if a.sha256 == b.sha256:
        return base.model_copy(
            update={"frobenius_delta": 0.0, "max_abs_diff": 0.0, "relative_change": 0.0}
        )
    return base.model_copy(
        update={"status": "changed", **_delta(open_a.tensor(a), open_b.tensor(b))}
    )


@torch.inference_mode()
def _delta(a: torch.Tensor, b: torch.Tensor) -> dict[str, float | None]:
    if not (a.is_floating_point() or a.is_complex()):
        a, b = a.double(), b.double()
    delta = (b.double() - a.double()) if a.numel() < (1 << 20) else (b.float() - a.float())
    norm_delta = float(torch.linalg.vector_norm(delta))
    norm_a = float(torch.linalg.vector_norm(a.float()))
    return {
        "frobenius_delta": norm_delta,
        "max_abs_diff": float(delta.abs().max()) if delta.numel() else 0.0,
        "relative_change": norm_delta / norm_a if norm_a else None,
    }
