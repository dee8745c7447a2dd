"""Dense products computed exactly as `generate` computes them, on several cores.

`generate` decodes with one row per product (M=1), which MKL runs as a single-threaded GEMV, so
the only exact way to decode several sequences is one M=1 call per sequence (stacking rows
changes the summation order, see runner.py). Those calls are independent, so the rows are
shared among threads: each thread makes the very call `generate` makes for its rows.

A weight too large for the CPU cache (the LM head: 154 MB in GPT-2) would be streamed from
memory once per row; it is cut into cache-sized slices of output columns and every row is
multiplied by a slice while it is cached. Cutting columns is exact only when MKL keeps its
kernel for the narrower matrix, which is not true of every shape, so it is checked on random
rows once per module and the slices are used only when every bit matched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F


def pin_torch_threads(count: int | None = None) -> None:
    """Called first in every thread that runs the model. A new thread's OpenMP/MKL thread count
    starts at the library default (the cores), not at torch's setting, until a torch op first
    runs a parallel loop; MKL's results on Intel CPUs depend on that count, so a product in such
    a thread could differ in the last bits from the same product on the thread that set it."""
    torch.set_num_threads(count or torch.get_num_threads())


class HelperThread:
    """A thread that runs one job at a time for the scheduler thread (in inference mode)."""

    def __init__(self, name: str) -> None:
        self._jobs: SimpleQueue[Callable[[], torch.Tensor] | None] = SimpleQueue()
        self._results: SimpleQueue[torch.Tensor | BaseException] = SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], torch.Tensor]) -> None:
        self._jobs.put(job)

    def outcome(self) -> torch.Tensor | BaseException:
        """The submitted job's result, or what it raised."""
        return self._results.get()

    def stop(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        pin_torch_threads()
        with torch.inference_mode():
            while (job := self._jobs.get()) is not None:
                try:
                    self._results.put(job())
                except BaseException as exc:  # handed to the waiting scheduler thread
                    self._results.put(exc)


# Weights above this are sliced so that a slice stays in the last-level cache while every row
# uses it (2-core AMD EPYC here: 32 MB L3; a 12 MB slice leaves room for the other thread's).
SLICE_BYTES = 12 << 20


def one_row_at_a_time(module: Any, hidden: torch.Tensor) -> torch.Tensor:
    """`module(row)` for each row of hidden [rows, 1, in], stacked: [rows, 1, out]."""
    outputs = [module(hidden[row : row + 1]) for row in range(hidden.shape[0])]
    return torch.cat(outputs) if len(outputs) > 1 else outputs[0]


def one_row_at_a_time_sliced(slices: list[torch.Tensor], hidden: torch.Tensor) -> torch.Tensor:
    """The same for a bias-free Linear cut into output slices: each slice serves every row
    while it is cached, then each row's pieces are joined."""
    rows = range(hidden.shape[0])
    pieces: list[list[torch.Tensor]] = [[] for _ in rows]
    for part in slices:
        for row in rows:
            pieces[row].append(F.linear(hidden[row : row + 1], part))
    return torch.cat([torch.cat(row_pieces, dim=-1) for row_pieces in pieces])


class ExactProducts:
    """`module(hidden)` with every row computed alone, the rows shared among the threads."""

    def __init__(self, helpers: list[HelperThread]) -> None:
        self.helpers = helpers
        # Weak keys: an evicted model's modules (and the slice views of their weights) go.
        self._slices: WeakKeyDictionary[Any, list[torch.Tensor] | None] = WeakKeyDictionary()

    def __call__(self, module: Any, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.shape[0]
        if rows == 1:
            # One row streams the weights from memory once, whichever core reads them.
            one: torch.Tensor = module(hidden)
            return one
        slices = self._slices_of(module)

        def compute(start: int, end: int) -> torch.Tensor:
            if slices is None:
                return one_row_at_a_time(module, hidden[start:end])
            return one_row_at_a_time_sliced(slices, hidden[start:end])

        return self.shared(rows, compute)

    def shared(self, rows: int, compute: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """`compute(start, end)` over consecutive shares of range(rows), one share per thread
        (this one included), concatenated in row order."""
        bounds = shares(rows, min(rows, len(self.helpers) + 1))
        helpers = self.helpers[: len(bounds) - 1]
        for helper, (start, end) in zip(helpers, bounds[1:], strict=True):
            helper.submit(lambda start=start, end=end: compute(start, end))  # type: ignore[misc]
        try:
            outputs = [compute(*bounds[0])]
        finally:  # always collect the helpers' outcomes, so none is left for the next call
            theirs = [helper.outcome() for helper in helpers]
        for outcome in theirs:
            if isinstance(outcome, BaseException):
                raise outcome
            outputs.append(outcome)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _slices_of(self, module: Any) -> list[torch.Tensor] | None:
        if module not in self._slices:
            self._slices[module] = exact_slices(module)
        return self._slices[module]


def shares(rows: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) ranges splitting `rows` into `parts` nearly equal consecutive shares."""
    size, extra = divmod(rows, parts)
    bounds = []
    start = 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def exact_slices(module: Any, probes: int = 3) -> list[torch.Tensor] | None:
    """Cache-sized output slices of a large bias-free CPU Linear, if (and only if) multiplying
    by the slices gives `module(row)` bit for bit on random rows."""
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
