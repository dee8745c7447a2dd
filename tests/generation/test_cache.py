"""ModelCache: single-flight loading off the event loop, LRU eviction within a byte budget."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.errors import NotFound
from app.generation import (
    GenerationEngine,
    GenerationFailed,
    GenerationParams,
    GenerationResult,
    LoadedModel,
    ModelCache,
    load_model_folder,
)
from app.generation.cache import parameter_bytes
from tests.generation.conftest import CPU, TinyFolder


class SlowLoader:
    """Loads the tiny folder slowly, remembering which threads it ran on."""

    def __init__(self, folder: TinyFolder, delay: float = 0.2) -> None:
        self.folder = folder
        self.delay = delay
        self.threads: list[str] = []

    def __call__(self, checkpoint_id: str) -> LoadedModel:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        if checkpoint_id == "missing":
            raise NotFound(f"checkpoint {checkpoint_id} not found")
        return load_model_folder(self.folder.folder, CPU)


def test_cold_model_is_loaded_once_for_ten_requests(tiny_folder: TinyFolder) -> None:
    loader = SlowLoader(tiny_folder)
    cache = ModelCache(loader, budget_bytes=1 << 30)
    engine = GenerationEngine(cache, CPU, max_queue=16, max_batch=4)

    async def run() -> list[GenerationResult]:
        ticks = 0

        async def heartbeat() -> None:  # proves the event loop is not blocked by the load
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beating = asyncio.create_task(heartbeat())
        ids: list[int] = tiny_folder.tokenizer("hello")["input_ids"]
        params = GenerationParams(max_new_tokens=4)
        results = await asyncio.gather(*(engine.generate("cold", ids, params) for _ in range(10)))
        beating.cancel()
        assert ticks >= 10  # ~0.2 s of load, ticking every 10 ms
        return list(results)

    try:
        results = asyncio.run(run())
    finally:
        engine.close()
        cache.close()
    assert cache.loads["cold"] == 1
    assert loader.threads == ["model-load_0"]
    assert len({tuple(t.id for t in r.tokens) for r in results}) == 1


def test_failed_load_reaches_every_waiter_and_is_retried(tiny_folder: TinyFolder) -> None:
    cache = ModelCache(SlowLoader(tiny_folder, delay=0.1), budget_bytes=1 << 30)

    async def run() -> list[BaseException | LoadedModel]:
        return list(
            await asyncio.gather(*(cache.get("missing") for _ in range(3)), return_exceptions=True)
        )

    outcomes = asyncio.run(run())
    assert all(isinstance(o, NotFound) for o in outcomes)
    asyncio.run(run())
    assert cache.loads["missing"] == 2  # once per burst: failures are not cached
    cache.close()


def test_broken_loads_are_generation_failures() -> None:
    def broken(_checkpoint_id: str) -> LoadedModel:
        raise OSError("safetensors header is corrupt")

    cache = ModelCache(broken, budget_bytes=1 << 30)
    with pytest.raises(GenerationFailed, match="loading checkpoint x failed: safetensors") as err:
        asyncio.run(cache.get("x"))
    assert (err.value.status, err.value.code) == (424, "generation")
    cache.close()


def test_lru_eviction_by_budget(tiny_folder: TinyFolder) -> None:
    loader = SlowLoader(tiny_folder, delay=0.0)
    size = parameter_bytes(load_model_folder(tiny_folder.folder, CPU).model)
    cache = ModelCache(loader, budget_bytes=2 * size)

    async def run() -> None:
        a = await cache.get("a")
        await cache.get("b")
        assert await cache.get("a") is a  # a hit, and "a" becomes the most recently used
        await cache.get("c")  # over budget: "b", the least recently used, goes
        assert cache.resident() == ["a", "c"]
        assert cache.resident_bytes == 2 * size
        await cache.get("b")
        assert cache.resident() == ["c", "b"]

    asyncio.run(run())
    assert cache.loads == {"a": 1, "b": 2, "c": 1}
    cache.close()


def test_model_larger_than_the_budget_is_still_served(tiny_folder: TinyFolder) -> None:
    cache = ModelCache(SlowLoader(tiny_folder, delay=0.0), budget_bytes=1)

    async def run() -> None:
        await cache.get("a")
        await cache.get("b")
        assert cache.resident() == ["b"]

    asyncio.run(run())
    assert cache.discard("b") and cache.resident() == []
    cache.close()


def test_parameter_bytes_counts_tied_weights_once(tiny_folder: TinyFolder) -> None:
    model = load_model_folder(tiny_folder.folder, CPU).model
    assert model.lm_head.weight is model.transformer.wte.weight
    expected = sum(p.numel() for p in model.parameters()) * 4
    assert parameter_bytes(model) == expected
    assert LoadedModel.of(model, None).nbytes == expected


def test_unknown_checkpoint_fails_the_stream_call(tiny_folder: TinyFolder) -> None:
    cache = ModelCache(SlowLoader(tiny_folder, delay=0.0), budget_bytes=1 << 30)
    engine = GenerationEngine(cache, CPU, max_queue=1)
    try:
        with pytest.raises(NotFound):
            asyncio.run(engine.stream("missing", [1, 2], GenerationParams()))
        assert engine.stats().waiting == 0  # the queue place was given back
    finally:
        engine.close()
        cache.close()
