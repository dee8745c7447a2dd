"""Exact steps in one forward: every dense product of the batched forward computed row by row.

One [1, 1] forward per sequence (runner.py's plain exact path) streams all the weights from
memory once per sequence. In one batched forward whose dense products take one row at a time,
each layer's weights are used by every row while they are in the CPU cache, and each row's
product is the very M=1 call `generate` makes. That is exact only when everything else in the
forward is row-independent (embeddings, norms, element-wise ops, per-row attention), which is
true of the plain dense families but not, say, of mixture-of-experts layers that group rows per
expert. So it is used only for models whose every matrix is a Linear, Conv1D or Embedding, and
only after a probe found it bit-identical to the per-sequence forwards (runner.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers.pytorch_utils import Conv1D

from app.generation.rows import RowPool

_DENSE = (torch.nn.Linear, Conv1D)


def dense_modules(model: Any) -> list[Any] | None:
    """The model's Linear/Conv1D modules, or None when some other module holds a matrix."""
    dense = []
    for module in model.modules():
        if isinstance(module, _DENSE):
            dense.append(module)
        elif not isinstance(module, torch.nn.Embedding) and any(
            p.dim() >= 2 for p in module.parameters(recurse=False)
        ):
            return None
    return dense


class RowByRowProducts:
    """The dense modules' forwards, one row at a time, for the exact steps of one model."""

    def __init__(self, modules: list[Any], rows: RowPool) -> None:
        self.rows = rows
        self.forwards = [(module, _rows_forward(module)) for module in modules]

    @contextmanager
    def active(self) -> Iterator[None]:
        """While inside, each module's forward over [rows, 1, in] runs once per row, the rows
        shared among the pool's threads (they call the class's forward, not this one)."""
        for module, forward in self.forwards:
            module.forward = self._shared(forward)
        try:
            yield
        finally:
            for module, _forward in self.forwards:
                del module.forward

    def _shared(self, forward: RowsForward) -> Callable[[torch.Tensor], torch.Tensor]:
        def each_row(hidden: torch.Tensor) -> torch.Tensor:
            return self.rows.shared(hidden.shape[0], lambda s, e: forward(hidden[s:e]))

        return each_row


RowsForward = Callable[[torch.Tensor], torch.Tensor]

# Weights above this are sliced so that a slice stays in the last-level cache while every row
# uses it (2-core AMD EPYC here: 32 MB L3; a 12 MB slice leaves room for the other thread's).
SLICE_BYTES = 12 << 20


def _rows_forward(module: Any) -> RowsForward:
    """`module(row)` for each row of hidden [rows, 1, in], stacked: [rows, 1, out]. A weight too
    large for the CPU cache (an LM head) would be streamed from memory once per row; it is cut
    into cache-sized output slices, each serving every row while cached, when that is exact."""
    forward = type(module).forward.__get__(module)
    slices = exact_slices(module)
    if slices is not None:
        return lambda hidden: _sliced(slices, hidden)
    return lambda hidden: torch.cat([forward(hidden[i : i + 1]) for i in range(hidden.shape[0])])


def _sliced(slices: list[torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    rows = range(hidden.shape[0])
    pieces: list[list[torch.Tensor]] = [[] for _ in rows]
    for part in slices:
        for row in rows:
            pieces[row].append(F.linear(hidden[row : row + 1], part))
    return torch.cat([torch.cat(row_pieces, dim=-1) for row_pieces in pieces])


def exact_slices(module: Any, probes: int = 3) -> list[torch.Tensor] | None:
    """Cache-sized output slices of a large bias-free CPU Linear, if (and only if) multiplying
    by the slices gives `module(row)` bit for bit on random rows (MKL may pick another kernel
    for the narrower matrix)."""
    weight = module.weight if isinstance(module, torch.nn.Linear) else None
    if weight is None or module.bias is not None or weight.device.type != "cpu":
        return None
    if weight.numel() * weight.element_size() <= 2 * SLICE_BYTES:
        return None
    rows_per_slice = max(64, SLICE_BYTES // (weight.shape[1] * weight.element_size()) // 64 * 64)
    slices = list(torch.split(weight, rows_per_slice))
    generator = torch.Generator().manual_seed(0)
    for _ in range(probes):
        row = torch.randn((1, 1, weight.shape[1]), generator=generator).to(weight.dtype)
        joined = torch.cat([F.linear(row, part) for part in slices], dim=-1)
        if not torch.equal(joined, module(row)):
            return None
    return slices
