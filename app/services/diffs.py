"""Tensor-by-tensor comparison of two stored checkpoints, without running either model.

Tensors whose recorded sha256 match are identical without reading a byte; the others are read
one pair at a time through safetensors (memory-mapped), so two 500 MB checkpoints never sit in
memory together.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from pydantic import BaseModel
from safetensors import safe_open

from app.db.engine import Database
from app.db.repositories import CheckpointRepository
from app.services.views import TensorView
from app.storage.base import BlobStorage

_BLOCK_ELEMENTS = 1 << 20


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
    def __init__(self, db: Database, store: BlobStorage) -> None:
        self.db = db
        self.store = store

    def diff(self, ref_a: str, ref_b: str) -> CheckpointDiff:
        side_a, side_b = self._side(ref_a), self._side(ref_b)
        open_a, open_b = _Opener(self.store, side_a), _Opener(self.store, side_b)
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
    """Reads one side's tensors in row blocks, opening its file per tensor.

    Closing the file after each tensor unmaps it, so pages already compared do not stay
    counted in the process's memory while the rest of the diff runs.
    """

    def __init__(self, store: BlobStorage, side: _Side) -> None:
        self.store, self.side = store, side

    def path(self, view: TensorView) -> str:
        return str(self.store.local_path(self.side.files[view.file]))


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
    return base.model_copy(update={"status": "changed", **_delta(a, b, open_a, open_b)})


@torch.inference_mode()
def _delta(
    a: TensorView, b: TensorView, open_a: _Opener, open_b: _Opener
) -> dict[str, float | None]:
    """‖ΔW‖_F, max |Δ| and ‖ΔW‖_F / ‖W_a‖_F accumulated in float64 over row blocks."""
    squares = delta_squares = max_abs = 0.0
    with safe_open(open_a.path(a), "pt") as file_a, safe_open(open_b.path(b), "pt") as file_b:
        for block_a, block_b in zip(_blocks(file_a, a), _blocks(file_b, b), strict=True):
            left, right = block_a.double(), block_b.double()
            delta = right - left
            squares += float(left.square().sum())
            delta_squares += float(delta.square().sum())
            if delta.numel():
                max_abs = max(max_abs, float(delta.abs().max()))
    norm_delta, norm_a = math.sqrt(delta_squares), math.sqrt(squares)
    return {
        "frobenius_delta": norm_delta,
        "max_abs_diff": max_abs,
        "relative_change": norm_delta / norm_a if norm_a else None,
    }


def _blocks(handle: Any, view: TensorView) -> Iterator[torch.Tensor]:
    if not view.shape:
        yield handle.get_tensor(view.name)
        return
    rows = view.shape[0]
    per_row = max(1, view.numel // max(rows, 1))
    step = max(1, _BLOCK_ELEMENTS // per_row)
    sliced = handle.get_slice(view.name)
    for start in range(0, rows, step):
        yield sliced[start : start + step]
