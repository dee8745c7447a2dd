"""Greedy decoding is bit-exact with `model.generate`, alone and inside a changing batch."""

from __future__ import annotations

import asyncio

import pytest

from app.generation import (
    GenerationEngine,
    GenerationParams,
    GenerationResult,
    LoadedModel,
    TokenEvent,
    lockstep,
)
from tests.generation.conftest import CPU, single_model_cache
from tests.generation.reference import Reference, assert_same, greedy_reference

TEXTS = [
    "the quick brown fox",
    "hello",
    "a checkpoint registry keeps trained models safe",
    "weights, outputs and hashes must",
    "lazy dog",
    "the model says hello back to the world and the quick brown",
]
NEW_TOKENS = [20, 31, 12, 25, 40, 9]


def prompts(loaded: LoadedModel) -> list[list[int]]:
    return [loaded.tokenizer(text)["input_ids"] for text in TEXTS]


def references(loaded: LoadedModel) -> list[Reference]:
    return [
        greedy_reference(loaded.model, prompt, new)
        for prompt, new in zip(prompts(loaded), NEW_TOKENS, strict=True)
    ]


def test_alone_matches_generate(engine: GenerationEngine, loaded: LoadedModel) -> None:
    async def run() -> list[GenerationResult]:
        return [
            await engine.generate("tiny", prompt, GenerationParams(max_new_tokens=new))
            for prompt, new in zip(prompts(loaded), NEW_TOKENS, strict=True)
        ]

    for result, reference in zip(asyncio.run(run()), references(loaded), strict=True):
        assert_same(result, reference)
        assert result.finish_reason == "length"
        assert result.seed is None


def test_batched_matches_generate(engine: GenerationEngine, loaded: LoadedModel) -> None:
    """Six requests of different lengths join a running batch at different steps (each one
    starts when the previous one has streamed two tokens) and leave at different steps."""

    before = engine.stats()
    results = asyncio.run(run_together(engine, loaded))
    after = engine.stats()
    for result, reference in zip(results, references(loaded), strict=True):
        assert_same(result, reference)
    steps = after.decode_steps - before.decode_steps
    rows = after.decoded_rows - before.decoded_rows
    assert rows == sum(NEW_TOKENS) - len(NEW_TOKENS)  # the first token of each is the prefill's
    assert steps < rows  # sequences really shared forward passes
    assert after.running == 0


def test_batched_with_a_sliced_lm_head(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices small enough that even the tiny LM head is cut (the way GPT-2's 154 MB one is):
    still bit-exact, because slicing is only used when it is."""
    assert lockstep.exact_slices(loaded.model.lm_head) is None  # unpatched: too small to cut
    monkeypatch.setattr(lockstep, "SLICE_BYTES", 16 << 10)
    engine = GenerationEngine(
        single_model_cache(loaded), CPU, exactness="always", product_threads=2
    )
    try:
        results = asyncio.run(run_together(engine, loaded))
    finally:
        engine.close()
    for result, reference in zip(results, references(loaded), strict=True):
        assert_same(result, reference)
    assert lockstep.exact_slices(loaded.model.lm_head) is not None


def test_batched_fast_mode_is_exact_alone(loaded: LoadedModel) -> None:
    """Without batch invariance a lone request still takes generate's exact path."""
    engine = GenerationEngine(single_model_cache(loaded), CPU, exactness="never")
    prompt = prompts(loaded)[0]
    try:
        result = asyncio.run(engine.generate("tiny", prompt, GenerationParams(max_new_tokens=15)))
    finally:
        engine.close()
    assert_same(result, greedy_reference(loaded.model, prompt, 15))


async def run_together(engine: GenerationEngine, loaded: LoadedModel) -> list[GenerationResult]:
    tasks: list[asyncio.Task[GenerationResult]] = []
    for prompt, new in zip(prompts(loaded), NEW_TOKENS, strict=True):
        started = asyncio.Event()
        tasks.append(asyncio.create_task(collect(engine, prompt, new, started)))
        await started.wait()
    return list(await asyncio.gather(*tasks))


async def collect(
    engine: GenerationEngine, prompt: list[int], new_tokens: int, started: asyncio.Event
) -> GenerationResult:
    """engine.generate, but signalling once two tokens have streamed."""
    tokens: list[TokenEvent] = []
    async with await engine.stream(
        "tiny", prompt, GenerationParams(max_new_tokens=new_tokens)
    ) as s:
        async for event in s:
            if isinstance(event, TokenEvent):
                tokens.append(event)
                if len(tokens) == 2:
                    started.set()
                continue
            started.set()
            return GenerationResult.of(tokens, event)
    raise AssertionError("no finish event")
