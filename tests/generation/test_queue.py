"""The bounded queue (429) and cancellation (a disconnected client stops costing compute)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from app.generation import (
    GenerationEngine,
    GenerationParams,
    GenerationStream,
    LoadedModel,
    Overloaded,
    TokenEvent,
)
from tests.generation.conftest import CPU, single_model_cache

LONG = GenerationParams(max_new_tokens=55)


def prompt_of(loaded: LoadedModel) -> list[int]:
    ids: list[int] = loaded.tokenizer("hello world")["input_ids"]
    return ids


async def first_token(stream: GenerationStream) -> TokenEvent:
    event = await anext(stream)
    assert isinstance(event, TokenEvent)
    return event


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def test_overloaded_when_the_queue_is_full(loaded: LoadedModel) -> None:
    engine = GenerationEngine(single_model_cache(loaded), CPU, max_queue=2, max_batch=1)

    async def run() -> None:
        prompt = prompt_of(loaded)
        running = await engine.stream("tiny", prompt, LONG)
        await first_token(running)  # admitted: the only batch place is taken
        waiting = [await engine.stream("tiny", prompt, LONG) for _ in range(2)]
        assert engine.stats().waiting == 2
        with pytest.raises(Overloaded) as raised:
            await engine.stream("tiny", prompt, LONG)
        assert (raised.value.status, raised.value.code) == (429, "overloaded")
        await waiting[0].aclose()  # a place in the queue is free again
        assert engine.stats().waiting == 1
        (await engine.stream("tiny", prompt, LONG)).cancel()
        for stream in (running, *waiting):
            await stream.aclose()

    try:
        asyncio.run(run())
    finally:
        engine.close()


def test_closed_stream_stops_generating(loaded: LoadedModel) -> None:
    """Decoded rows are counted: after the close at most the step in flight (and one racing
    the snapshot) still includes the request; the request waiting behind it (max_batch=1)
    gets the freed place."""
    engine = GenerationEngine(single_model_cache(loaded), CPU, max_queue=4, max_batch=1)

    async def run() -> int:
        prompt = prompt_of(loaded)
        stream = await engine.stream("tiny", prompt, LONG)
        behind = asyncio.create_task(
            engine.generate("tiny", prompt, GenerationParams(max_new_tokens=3))
        )
        for _ in range(3):
            await anext(stream)
        rows_at_close = engine.stats().decoded_rows
        await stream.aclose()
        assert (await behind).generated_tokens == 3
        await wait_until(lambda: engine.stats().running == 0)
        return rows_at_close

    try:
        rows_at_close = asyncio.run(run())
        stats = engine.stats()
        assert stats.prefills == 2
        assert stats.decoded_rows <= rows_at_close + 2 + 2  # + in flight + `behind`'s 2 steps
        assert rows_at_close + 2 < LONG.max_new_tokens  # type: ignore[operator]
        time.sleep(0.05)
        assert engine.stats().decode_steps == stats.decode_steps  # nothing runs any more
    finally:
        engine.close()


def test_cancelled_task_cancels_the_request(loaded: LoadedModel) -> None:
    """An HTTP server cancels the task that streams to a client that went away."""
    engine = GenerationEngine(single_model_cache(loaded), CPU, max_queue=4, max_batch=2)

    async def consume(stream: GenerationStream, two_tokens: asyncio.Event) -> None:
        seen = 0
        async for event in stream:
            seen += isinstance(event, TokenEvent)
            if seen == 2:
                two_tokens.set()

    async def run() -> int:
        stream = await engine.stream("tiny", prompt_of(loaded), LONG)
        two_tokens = asyncio.Event()
        task = asyncio.create_task(consume(stream, two_tokens))
        await two_tokens.wait()
        rows_at_cancel = engine.stats().decoded_rows
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: engine.stats().running == 0)
        return rows_at_cancel

    try:
        rows_at_cancel = asyncio.run(run())
        assert engine.stats().decoded_rows <= rows_at_cancel + 2
        assert rows_at_cancel + 2 < LONG.max_new_tokens  # type: ignore[operator]
    finally:
        engine.close()


def test_dropped_stream_is_cancelled(loaded: LoadedModel) -> None:
    engine = GenerationEngine(single_model_cache(loaded), CPU, max_queue=4, max_batch=2)

    async def run() -> None:
        stream = await engine.stream("tiny", prompt_of(loaded), LONG)
        await first_token(stream)
        del stream  # never closed: garbage collection still cancels it
        await wait_until(lambda: engine.stats().running == 0)

    try:
        asyncio.run(run())
        assert engine.stats().decoded_rows < LONG.max_new_tokens  # type: ignore[operator]
    finally:
        engine.close()
