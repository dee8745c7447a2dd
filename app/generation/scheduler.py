"""The scheduler thread: the only place model arithmetic runs.

Each iteration admits waiting requests up to `max_batch` running ones (each is prefilled on its
own, which emits its first token), then runs one decode step per loaded model over all of that
model's running sequences. Sequences join after their prefill and leave when finished or
cancelled, between steps; nothing about the others changes when they do (each sequence owns its
KV buffer), so there is no cache to rebuild.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal
from weakref import WeakKeyDictionary

import torch

from app.errors import AppError
from app.generation.cache import LoadedModel
from app.generation.errors import GenerationFailed
from app.generation.rows import HelperThread, RowPool, pin_torch_threads
from app.generation.sequence import ModelState, Request, Sequence, new_model_state

logger = logging.getLogger(__name__)

# When a decode step runs each row's forward alone (bit-identical to decoding it alone):
# always; only while a request that chose its sampling seed is in the batch; never.
Exactness = Literal["always", "seeded", "never"]


@dataclass
class SchedulerCounters:
    decode_steps: int = 0  # batched forward passes
    decoded_rows: int = 0  # sequence-steps inside them (a step of 3 sequences counts 3)
    exact_steps: int = 0  # steps of more than one row run as one forward per row
    prefills: int = 0
    generated_tokens: int = 0


class Scheduler:
    """Owns the scheduler thread (and the helper threads of the exact steps)."""

    def __init__(
        self,
        *,
        max_batch: int,
        exactness: Exactness,
        product_threads: int = 1,
        torch_threads: int | None = None,
    ) -> None:
        self.max_batch = max_batch
        self.exactness = exactness
        self.torch_threads = torch_threads
        self._helpers = [
            HelperThread(f"generation-helper-{i}") for i in range(1, max(1, product_threads))
        ]
        self._rows = RowPool(self._helpers)
        self.counters = SchedulerCounters()
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._groups: dict[LoadedModel, list[Sequence]] = {}
        self._states: WeakKeyDictionary[LoadedModel, ModelState] = WeakKeyDictionary()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="generation", daemon=True)
        self._thread.start()

    @property
    def running(self) -> int:
        """Sequences still generating (finished or cancelled ones leave at the next step but
        no longer count, so their batch place is free at once)."""
        return sum(
            1
            for sequences in list(self._groups.values())
            for s in list(sequences)
            if not (s.finished or s.request.cancelled)
        )

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._stopping:
                raise GenerationFailed("the generation engine is stopped")
            self._waiting.append(request)
            self._cond.notify()

    def notify(self) -> None:
        """Wake the thread (a waiting request was cancelled)."""
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float | None = None) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        pin_torch_threads(self.torch_threads)
        with torch.inference_mode():
            while (admitted := self._next_admissions()) is not None:
                for request in admitted:
                    self._start(request)
                for loaded, sequences in list(self._groups.items()):
                    self._step(loaded, sequences)
        self._fail_everything(GenerationFailed("the generation engine stopped"))
        for helper in self._helpers:
            helper.stop()

    def _next_admissions(self) -> list[Request] | None:
        """Requests to prefill now (possibly none while others decode); None to stop."""
        with self._cond:
            while True:
                if self._stopping:
                    return None
                admitted: list[Request] = []
                free = self.max_batch - self.running
                while free > len(admitted) and self._waiting:
                    request = self._waiting.popleft()
                    if not request.cancelled:
                        admitted.append(request)
                if admitted or self._groups:
                    return admitted
                self._cond.wait()

    def _start(self, request: Request) -> None:
        """Prefill one request alone (as `generate` would) and emit its first token."""
        request.release_slot()
        request.admitted = time.perf_counter()
        try:
            state = self._state(request.loaded)
            sequence = Sequence(request, state, state.runner.new_cache())
            last, every = state.runner.prefill(
                request.prompt, sequence.cache, all_logits=request.params.decoder_input_details
            )
            if every is not None:
                sequence.record_prefill(every)
            self.counters.prefills += 1
            request.first_token = time.perf_counter()
            sequence.advance(last)
            self.counters.generated_tokens += 1
        except AppError as exc:
            request.emit(exc)
            return
        except Exception as exc:
            logger.exception("prefill failed")
            request.emit(GenerationFailed(f"generation failed: {exc}"))
            return
        if not sequence.finished:
            self._groups.setdefault(request.loaded, []).append(sequence)

    def _step(self, loaded: LoadedModel, sequences: list[Sequence]) -> None:
        """One decode step for all live sequences of one model; cancelled ones are dropped
        here, before the forward pass, so they cost nothing from now on."""
        live = [s for s in sequences if not s.request.cancelled]
        if not live:
            del self._groups[loaded]
            return
        try:
            exact = self._exact(live)
            logits = self._state(loaded).runner.decode(
                [s.cache for s in live], [s.last_token for s in live], exact=exact
            )
        except Exception as exc:
            logger.exception("decode step failed")
            for sequence in live:
                sequence.request.emit(GenerationFailed(f"generation failed: {exc}"))
            del self._groups[loaded]
            return
        self.counters.decode_steps += 1
        self.counters.exact_steps += exact and len(live) > 1
        self.counters.decoded_rows += len(live)
        for row, sequence in enumerate(live):
            self._advance(sequence, logits[row : row + 1])
        remaining = [s for s in live if not s.finished]
        if remaining:
            self._groups[loaded] = remaining
        else:
            del self._groups[loaded]

    def _exact(self, sequences: list[Sequence]) -> bool:
        if self.exactness == "seeded":
            return any(s.request.params.seeded_sampling for s in sequences)
        return self.exactness == "always"

    def _advance(self, sequence: Sequence, logits: torch.Tensor) -> None:
        try:
            sequence.advance(logits)
            self.counters.generated_tokens += 1
        except Exception as exc:
            logger.exception("choosing a token failed")
            sequence.finished = True
            sequence.request.emit(GenerationFailed(f"generation failed: {exc}"))

    def _state(self, loaded: LoadedModel) -> ModelState:
        state = self._states.get(loaded)
        if state is None:
            state = new_model_state(loaded, rows=self._rows)
            self._states[loaded] = state
        return state

    def _fail_everything(self, error: GenerationFailed) -> None:
        with self._cond:
            requests = list(self._waiting)
            self._waiting.clear()
        for request in requests:
            request.release_slot()
            request.emit(error)
        for sequences in self._groups.values():
            for sequence in sequences:
                sequence.request.emit(error)
        self._groups.clear()
