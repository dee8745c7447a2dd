"""Text generation from cached models with continuous batching, for TGI/OpenAI-style endpoints.

    engine = GenerationEngine(cache, device, max_queue=64, max_batch=8)
    loaded = await engine.model(checkpoint_id)          # tokenizer and context length
    ids = await engine.encode(loaded, prompt)           # on the tokenizer thread
    engine.validate(loaded, ids, params)                 # TGI's 422 messages
    stream = await engine.stream(checkpoint_id, ids, params)   # 429 / 422 raise here
    async with stream:                                   # closing it cancels the request
        async for event in stream: ...                   # TokenEvent..., FinishEvent

All model work happens on one scheduler thread (see scheduler.py); the event loop only awaits
queues fed with `call_soon_threadsafe`. Prompts are tokenized (and token-id prompts decoded) on
one tokenizer thread: a long prompt takes a few hundred ms there, and one thread means the
HTTP side's tokenizer is never used by two threads at once.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import torch

from app.generation.cache import LoadedModel, ModelCache
from app.generation.errors import ModelUnavailable, Overloaded, ValidationFailed
from app.generation.events import (
    FinishEvent,
    GenerationEvent,
    GenerationResult,
    TokenEvent,
)
from app.generation.params import (
    DEFAULT_MAX_STOP_SEQUENCES,
    DEFAULT_MAX_TOP_N_TOKENS,
    GenerationParams,
)
from app.generation.runner import ModelRunner
from app.generation.scheduler import Exactness, Scheduler
from app.generation.sequence import Request


@dataclass(frozen=True)
class EngineStats:
    waiting: int  # accepted, not yet prefilled (includes those waiting for a model load)
    running: int
    decode_steps: int
    decoded_rows: int
    exact_steps: int
    prefills: int
    generated_tokens: int


FinishListener = Callable[[FinishEvent], None]
T = TypeVar("T")


class _QueueSlot:
    """A place in the bounded waiting queue, given back exactly once."""

    def __init__(self, engine: GenerationEngine) -> None:
        self._engine = engine
        self._held = True

    def release(self) -> None:
        with self._engine._lock:
            if self._held:
                self._held = False
                self._engine._waiting -= 1


class GenerationStream(AsyncIterator[GenerationEvent]):
    """The events of one request. Closing it (or cancelling the task awaiting it) cancels the
    request: the scheduler drops it before its next step."""

    def __init__(
        self, request: Request, scheduler: Scheduler, finish_listeners: list[FinishListener]
    ) -> None:
        self._request = request
        self._scheduler = scheduler
        self._finish_listeners = finish_listeners
        self._done = False
        self._peeked: GenerationEvent | BaseException | None = None

    @property
    def seed(self) -> int | None:
        return self._request.seed

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> GenerationEvent:
        if self._done:
            raise StopAsyncIteration
        item, self._peeked = self._peeked, None
        try:
            if item is None:
                item = await self._request.events.get()
        except BaseException:  # cancelled while waiting: the client went away
            self.cancel()
            raise
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if isinstance(item, FinishEvent):
            self._done = True
            for listener in self._finish_listeners:
                listener(item)
        return item

    def finish_after(self) -> FinishEvent | None:
        """Right after a token: the finish event if that token was the last (the scheduler
        queues a last token and its finish together), without waiting for anything."""
        if self._peeked is None and not self._request.events.empty():
            self._peeked = self._request.events.get_nowait()
        return self._peeked if isinstance(self._peeked, FinishEvent) else None

    def cancel(self) -> None:
        if self._done:
            return
        self._done = True
        self._request.cancelled = True
        self._request.release_slot()
        self._scheduler.notify()

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> GenerationStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cancel()

    def __del__(self) -> None:
        # Dropped without being closed: still stop generating (no lock, no wake-up needed).
        if not self._done:
            self._request.cancelled = True


class GenerationEngine:
    """`max_queue`: requests allowed to wait (beyond it: Overloaded, 429). `max_batch`: requests
    decoding at once. `exactness`: when a decode step runs every sequence through its own
    [1, 1] forward, so its tokens and logprobs are bit-identical to decoding it alone (and so to
    `model.generate`) whatever it is batched with: "always"; "seeded" (the default) while a
    request sampling with a seed of its own is in the batch; "never". Stacked rows are much
    faster under concurrency, but their floats may differ in the last bits, which can flip a
    near-tie. A sequence decoding alone is always exact. `product_threads`: threads sharing
    the rows of the exact (one forward per row) steps; by default torch's thread count on a
    CPU, at most 4, and 1 on a GPU.
    `torch_threads`: set torch's (process-wide) intra-op threads from the scheduler."""

    def __init__(
        self,
        cache: ModelCache,
        device: torch.device,
        max_queue: int = 64,
        max_batch: int = 8,
        *,
        exactness: Exactness = "seeded",
        max_stop_sequences: int = DEFAULT_MAX_STOP_SEQUENCES,
        max_top_n_tokens: int = DEFAULT_MAX_TOP_N_TOKENS,
        product_threads: int | None = None,
        torch_threads: int | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.cache = cache
        self.device = torch.device(device)
        self.max_queue = max_queue
        self.max_stop_sequences = max_stop_sequences
        self.max_top_n_tokens = max_top_n_tokens
        self._lock = threading.Lock()
        self._waiting = 0
        # Called on the event loop with each finish a client reads (metrics observe timings).
        self.finish_listeners: list[FinishListener] = []
        if product_threads is None:
            product_threads = default_product_threads(self.device)
        self._scheduler = Scheduler(
            max_batch=max_batch,
            exactness=exactness,
            product_threads=product_threads,
            torch_threads=torch_threads,
        )
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix="tokenize")

    async def model(self, checkpoint_id: str) -> LoadedModel:
        """The loaded model (tokenizer, context_length), loading it if needed."""
        return await self.cache.get(checkpoint_id)

    async def encode(self, loaded: LoadedModel, text: str) -> list[int]:
        """The prompt's token ids, computed off the event loop."""
        return await self._tokenizer_call(lambda: list(loaded.tokenizer(text)["input_ids"]))

    async def decode(self, loaded: LoadedModel, ids: list[int]) -> str:
        """The text of token ids, computed off the event loop."""
        return await self._tokenizer_call(lambda: str(loaded.tokenizer.decode(ids)))

    async def _tokenizer_call(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._tokenizing, call)

    def validate(self, loaded: LoadedModel, input_ids: list[int], params: GenerationParams) -> None:
        """Everything TGI's router checks, including prompt + max_new_tokens ≤ context."""
        params.validate(
            input_length=len(input_ids),
            context_length=loaded.context_length,
            max_stop_sequences=self.max_stop_sequences,
            max_top_n_tokens=self.max_top_n_tokens,
        )

    async def stream(
        self, checkpoint_id: str, input_ids: list[int], params: GenerationParams
    ) -> GenerationStream:
        """Queue a request. Raises ValidationFailed, Overloaded (queue full), NotFound or
        ModelUnavailable (from loading) before anything is generated. max_new_tokens beyond the
        context is not an error here: generation stops at the context with "length"."""
        params.validate(
            input_length=len(input_ids),
            max_stop_sequences=self.max_stop_sequences,
            max_top_n_tokens=self.max_top_n_tokens,
        )
        slot = self._take_slot()
        try:
            loaded = await self.cache.get(checkpoint_id)
            request = self._request(loaded, list(input_ids), params, slot)
            self._scheduler.submit(request)
        except BaseException:
            slot.release()
            raise
        return GenerationStream(request, self._scheduler, self.finish_listeners)

    async def generate(
        self, checkpoint_id: str, input_ids: list[int], params: GenerationParams
    ) -> GenerationResult:
        tokens: list[TokenEvent] = []
        async with await self.stream(checkpoint_id, input_ids, params) as stream:
            async for event in stream:
                if isinstance(event, TokenEvent):
                    tokens.append(event)
                else:
                    return GenerationResult.of(tokens, event)
        raise AssertionError("a stream always ends with a FinishEvent or an error")

    def stats(self) -> EngineStats:
        counters = self._scheduler.counters
        return EngineStats(
            waiting=self._waiting,
            running=self._scheduler.running,
            decode_steps=counters.decode_steps,
            decoded_rows=counters.decoded_rows,
            exact_steps=counters.exact_steps,
            prefills=counters.prefills,
            generated_tokens=counters.generated_tokens,
        )

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the scheduler thread; requests still queued or running fail."""
        self._scheduler.stop(timeout)
        self._tokenizing.shutdown(wait=False, cancel_futures=True)

    def _take_slot(self) -> _QueueSlot:
        with self._lock:
            if self._waiting >= self.max_queue:
                raise Overloaded("Model is overloaded")
            self._waiting += 1
        return _QueueSlot(self)

    def _request(
        self, loaded: LoadedModel, input_ids: list[int], params: GenerationParams, slot: _QueueSlot
    ) -> Request:
        context = loaded.context_length
        if len(input_ids) >= context:
            raise ValidationFailed(
                f"`inputs` must have less than {context} tokens. Given: {len(input_ids)}"
            )
        vocab_size = int(loaded.config.vocab_size)
        if any(not 0 <= token < vocab_size for token in input_ids):
            raise ValidationFailed(f"`inputs` token ids must be >= 0 and < {vocab_size}")
        ModelRunner.check_supported(loaded.model)
        model_device = loaded.model.device
        if model_device != self.device:
            raise ModelUnavailable(f"the model is on {model_device}, the engine on {self.device}")
        seed = params.seed
        if params.do_sample and seed is None:
            seed = secrets.randbits(64)
        return Request(
            loaded=loaded,
            prompt=input_ids,
            params=params,
            seed=seed if params.do_sample else None,
            budget=params.new_token_budget(len(input_ids), context),
            loop=asyncio.get_running_loop(),
            release_slot=slot.release,
        )


def default_product_threads(device: torch.device) -> int:
    if device.type != "cpu":
        return 1  # GPU kernels are asynchronous and already use the whole device
    return max(1, min(4, torch.get_num_threads()))
