"""Sequences of an exact decode step shared among threads.

`generate` decodes with one row per product (M=1), which MKL runs as a single-threaded GEMV, so
the only exact way to decode several sequences is one [1, 1] forward per sequence (stacking
rows changes the summation order, see runner.py). Those forwards are independent, so the rows
are shared among threads: each thread makes the very calls `generate` makes for its rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue

import torch


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


class RowPool:
    """The scheduler thread and its helpers, computing consecutive shares of a step's rows."""

    def __init__(self, helpers: list[HelperThread]) -> None:
        self.helpers = helpers

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
