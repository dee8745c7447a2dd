"""A request as the two sides see it: `Request` crosses threads, `Sequence` is the scheduler's."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from app.generation.cache import LoadedModel
from app.generation.decoding import IncrementalDecoder, StopMatcher
from app.generation.events import (
    FinishEvent,
    FinishReason,
    GenerationEvent,
    PrefillToken,
    Timings,
    TokenEvent,
    TopToken,
)
from app.generation.params import GenerationParams
from app.generation.rows import RowPool
from app.generation.runner import ModelRunner, SequenceCache
from app.generation.sampling import Choice, TokenChooser


@dataclass(eq=False)
class Request:
    """Created on the event loop, handed to the scheduler thread.

    Events go back through `loop.call_soon_threadsafe` into `events`; `cancelled` is the only
    field the loop side writes afterwards (a plain attribute store, read at each step).
    """

    loaded: LoadedModel
    prompt: list[int]
    params: GenerationParams
    seed: int | None
    budget: int  # new tokens allowed: max_new_tokens capped by the context
    loop: asyncio.AbstractEventLoop
    release_slot: Callable[[], None]  # frees the waiting-queue place (idempotent)
    events: asyncio.Queue[GenerationEvent | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    created: float = field(default_factory=time.perf_counter)
    admitted: float = 0.0
    first_token: float = 0.0

    def emit(self, *items: GenerationEvent | BaseException) -> None:
        """Queue the items in one loop callback: a reader that gets the first finds the others
        already queued (a stream can tell a last token from another without waiting)."""
        try:
            self.loop.call_soon_threadsafe(self._put, items)
        except RuntimeError:  # the client's event loop is gone: nobody is listening
            self.cancelled = True

    def _put(self, items: tuple[GenerationEvent | BaseException, ...]) -> None:
        for item in items:
            self.events.put_nowait(item)


@dataclass
class ModelState:
    """Per loaded model, scheduler-side: its runner and a private tokenizer copy (a fast
    tokenizer must not be used by two threads at once; the HTTP side keeps the original)."""

    runner: ModelRunner
    tokenizer: Any
    special_ids: frozenset[int]
    eos_ids: frozenset[int]
    _texts: dict[int, str] = field(default_factory=dict)

    def token_text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = str(self.tokenizer.decode([token_id], skip_special_tokens=False))
            self._texts[token_id] = text
        return text


def eos_token_ids(loaded: LoadedModel) -> frozenset[int]:
    """`generate` stops on the generation config's EOS; fall back to the config, the tokenizer."""
    generation_config = getattr(loaded.model, "generation_config", None)
    for source in (generation_config, loaded.config, loaded.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            return frozenset([value] if isinstance(value, int) else value)
    return frozenset()


class Sequence:
    """A running request: its KV cache, token chooser, decoder and stop state."""

    def __init__(self, request: Request, state: ModelState, cache: SequenceCache) -> None:
        self.request = request
        self.state = state
        self.cache = cache
        self.chooser = TokenChooser(
            request.params, request.seed, state.runner.device, prompt_length=len(request.prompt)
        )
        self.decoder = IncrementalDecoder(state.tokenizer, request.prompt)
        self.stop = StopMatcher(tuple(request.params.stop))
        # Prompt + generated ids, for the repetition penalty; a view grows over one buffer.
        self.history = torch.empty(
            (1, len(request.prompt) + request.budget), dtype=torch.long, device=state.runner.device
        )
        self.history[0, : len(request.prompt)] = torch.tensor(request.prompt)
        self.generated: list[int] = []
        self.prefill: tuple[PrefillToken, ...] = ()
        self.finished = False

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    def logits_input_ids(self) -> torch.Tensor:
        return self.history[:, : len(self.request.prompt) + len(self.generated)]

    def record_prefill(self, every_logits: torch.Tensor) -> None:
        """TGI's prefill details: each prompt token with the raw logprob its prefix gave it."""
        prompt = self.request.prompt
        logprobs = torch.log_softmax(every_logits[:-1], dim=-1)
        following = torch.tensor(prompt[1:], dtype=torch.long, device=logprobs.device)
        values = logprobs.gather(1, following.unsqueeze(1)).squeeze(1).tolist()
        texts = [self.state.token_text(token_id) for token_id in prompt]
        self.prefill = tuple(
            PrefillToken(token_id, text, None if i == 0 else values[i - 1])
            for i, (token_id, text) in enumerate(zip(prompt, texts, strict=True))
        )

    def advance(self, logits: torch.Tensor) -> None:
        """Choose the next token from `logits` [1, vocab], emit it and maybe finish."""
        choice = self.chooser.choose(self.logits_input_ids(), logits)
        token_id = choice.token_id
        self.history[0, len(self.request.prompt) + len(self.generated)] = token_id
        self.generated.append(token_id)
        reason = self._length_or_eos(token_id)
        text = self.decoder.push(token_id, final=reason is not None)
        if reason is None and self.stop.push(text):
            reason = "stop_sequence"
        event = self._token_event(choice, text)
        if reason is None:
            self.request.emit(event)
        else:
            self.finished = True
            self.request.emit(event, self._finish_event(reason))

    def _length_or_eos(self, token_id: int) -> FinishReason | None:
        # TGI's order: the length limit is checked before EOS.
        if len(self.generated) >= self.request.budget:
            return "length"
        if token_id in self.state.eos_ids:
            return "eos_token"
        return None

    def _token_event(self, choice: Choice, text: str) -> TokenEvent:
        special = self.state.special_ids
        top = tuple(
            TopToken(token_id, self.state.token_text(token_id), logprob, token_id in special)
            for token_id, logprob in choice.top
        )
        return TokenEvent(
            index=len(self.generated) - 1,
            id=choice.token_id,
            text=text,
            logprob=choice.logprob,
            special=choice.token_id in special,
            top_tokens=top,
        )

    def _finish_event(self, reason: FinishReason) -> FinishEvent:
        text = str(self.state.tokenizer.decode(self.generated, skip_special_tokens=True))
        return FinishEvent(
            finish_reason=reason,
            generated_tokens=len(self.generated),
            generated_text=text,
            seed=self.request.seed,
            prefill=self.prefill,
            timings=self._timings(),
        )

    def _timings(self) -> Timings:
        request = self.request
        now = time.perf_counter()
        inference = now - request.admitted
        return Timings(
            queue=request.admitted - request.created,
            first_token=request.first_token - request.created,
            inference=inference,
            time_per_token=inference / len(self.generated),
            total=now - request.created,
        )


def new_model_state(loaded: LoadedModel, *, rows: RowPool) -> ModelState:
    tokenizer = copy.deepcopy(loaded.tokenizer)
    return ModelState(
        runner=ModelRunner(loaded.model, rows=rows),
        tokenizer=tokenizer,
        special_ids=frozenset(int(i) for i in tokenizer.all_special_ids),
        eos_ids=eos_token_ids(loaded),
    )
