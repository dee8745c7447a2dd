"""Seeded sampling: transformers' processors in transformers' order, one generator per request."""

from __future__ import annotations

import asyncio

import torch

from app.generation import GenerationEngine, GenerationParams, GenerationResult, LoadedModel
from tests.generation.conftest import CPU, single_model_cache
from tests.generation.reference import assert_same, generate_reference

WARPED = GenerationParams(
    max_new_tokens=24,
    do_sample=True,
    temperature=0.7,
    top_k=40,
    top_p=0.9,
    typical_p=0.95,
    repetition_penalty=1.3,
    seed=1234,
)


def prompt_of(loaded: LoadedModel, text: str) -> list[int]:
    ids: list[int] = loaded.tokenizer(text)["input_ids"]
    return ids


def test_matches_seeded_generate(engine: GenerationEngine, loaded: LoadedModel) -> None:
    prompt = prompt_of(loaded, "the quick brown fox")
    result = asyncio.run(engine.generate("tiny", prompt, WARPED))
    torch.manual_seed(1234)
    reference = generate_reference(
        loaded.model,
        prompt,
        do_sample=True,
        max_new_tokens=24,
        temperature=0.7,
        top_k=40,
        top_p=0.9,
        typical_p=0.95,
        repetition_penalty=1.3,
    )
    assert_same(result, reference)
    assert result.seed == 1234


def test_same_seed_alone_or_batched(engine: GenerationEngine, loaded: LoadedModel) -> None:
    prompt = prompt_of(loaded, "a checkpoint registry")
    others = [
        (prompt_of(loaded, "hello world"), GenerationParams(max_new_tokens=30)),
        (prompt_of(loaded, "weights"), GenerationParams(max_new_tokens=18, do_sample=True, seed=5)),
        (
            prompt_of(loaded, "the lazy dog says"),
            GenerationParams(max_new_tokens=40, do_sample=True, temperature=1.5, seed=9),
        ),
    ]

    async def together() -> GenerationResult:
        results = await asyncio.gather(
            *(engine.generate("tiny", p, params) for p, params in others[:2]),
            engine.generate("tiny", prompt, WARPED),
            engine.generate("tiny", *others[2]),
        )
        return results[2]

    alone = asyncio.run(engine.generate("tiny", prompt, WARPED))
    batched = asyncio.run(together())
    assert [t.id for t in batched.tokens] == [t.id for t in alone.tokens]
    assert [t.logprob for t in batched.tokens] == [t.logprob for t in alone.tokens]
    assert batched.generated_text == alone.generated_text


def test_default_exactness_follows_the_seeded_requests(loaded: LoadedModel) -> None:
    """The default ("seeded"): unseeded requests share stacked steps; while a request with a
    seed of its own is in the batch, steps are exact, so its text is the one it gets alone."""
    engine = GenerationEngine(single_model_cache(loaded), CPU)
    greedy = [
        (prompt_of(loaded, text), GenerationParams(max_new_tokens=20))
        for text in ("hello world", "the lazy dog says", "weights")
    ]

    async def together(*requests: tuple[list[int], GenerationParams]) -> list[GenerationResult]:
        return list(await asyncio.gather(*(engine.generate("tiny", p, r) for p, r in requests)))

    try:
        prompt = prompt_of(loaded, "a checkpoint registry")
        alone = asyncio.run(engine.generate("tiny", prompt, WARPED))
        asyncio.run(together(*greedy))
        stacked = engine.stats()
        batched = asyncio.run(together(*greedy, (prompt, WARPED)))[-1]
        mixed = engine.stats()
    finally:
        engine.close()
    assert stacked.exact_steps == 0 and stacked.decoded_rows > stacked.decode_steps
    assert mixed.exact_steps > 0
    assert [t.id for t in batched.tokens] == [t.id for t in alone.tokens]
    assert [t.logprob for t in batched.tokens] == [t.logprob for t in alone.tokens]


def test_unseeded_sampling_reports_a_reusable_seed(
    engine: GenerationEngine, loaded: LoadedModel
) -> None:
    prompt = prompt_of(loaded, "hello")
    params = GenerationParams(max_new_tokens=20, do_sample=True)
    first = asyncio.run(engine.generate("tiny", prompt, params))
    assert isinstance(first.seed, int)
    again = asyncio.run(
        engine.generate(
            "tiny", prompt, GenerationParams(max_new_tokens=20, do_sample=True, seed=first.seed)
        )
    )
    assert [t.id for t in again.tokens] == [t.id for t in first.tokens]


def test_logprobs_are_after_the_warpers(engine: GenerationEngine, loaded: LoadedModel) -> None:
    """TGI reports log-softmax of the warped scores: with top_k=1 every token is certain."""
    prompt = prompt_of(loaded, "quick")
    params = GenerationParams(max_new_tokens=8, do_sample=True, top_k=1, seed=3, top_n_tokens=3)
    result = asyncio.run(engine.generate("tiny", prompt, params))
    assert all(t.logprob == 0.0 for t in result.tokens)
    for token in result.tokens:
        assert token.top_tokens[0].id == token.id
        assert token.top_tokens[1].logprob == float("-inf")


def test_warpers_ignored_without_do_sample(engine: GenerationEngine, loaded: LoadedModel) -> None:
    """transformers' rule; `with_tgi_sampling()` gives TGI's (any warper turns sampling on)."""
    prompt = prompt_of(loaded, "hello")
    greedy = GenerationParams(max_new_tokens=10)
    warped = GenerationParams(max_new_tokens=10, temperature=0.5, top_k=3)
    plain = asyncio.run(engine.generate("tiny", prompt, greedy))
    ignored = asyncio.run(engine.generate("tiny", prompt, warped))
    assert [t.id for t in ignored.tokens] == [t.id for t in plain.tokens]
    assert ignored.seed is None
    assert warped.with_tgi_sampling().do_sample
    assert not greedy.with_tgi_sampling().do_sample
