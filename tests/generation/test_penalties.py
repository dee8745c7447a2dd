"""The knobs `generate` lacks (TGI's frequency penalty and watermark; OpenAI's frequency and
presence penalties and logit bias): bit-exact with `generate` plus a hand-written processor,
alone and batched, and each one changes the output."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from transformers import LogitsProcessorList

from app.generation import GenerationEngine, GenerationParams, GenerationResult, LoadedModel
from app.generation.errors import ValidationFailed
from tests.generation.penalty_reference import (
    HandFrequencyPenalty,
    HandLogitBias,
    HandOpenAIPenalties,
    HandWatermark,
    green_share,
)
from tests.generation.reference import Reference, assert_same, generate_reference

REPETITIVE = "the the the quick brown fox and the lazy dog"
NEW = 24


def prompt_of(loaded: LoadedModel, text: str = REPETITIVE) -> list[int]:
    ids: list[int] = loaded.tokenizer(text)["input_ids"]
    return ids


def run(engine: GenerationEngine, prompt: list[int], params: GenerationParams) -> GenerationResult:
    return asyncio.run(engine.generate("tiny", prompt, params))


def greedy_with(loaded: LoadedModel, prompt: list[int], *processors: Any) -> Reference:
    return generate_reference(
        loaded.model,
        prompt,
        do_sample=False,
        max_new_tokens=NEW,
        logits_processor=LogitsProcessorList(processors),
    )


def plain_greedy(loaded: LoadedModel, prompt: list[int]) -> list[int]:
    return greedy_with(loaded, prompt).ids


@pytest.mark.parametrize("penalty", [1.5, -2.0])
def test_tgi_frequency_penalty_greedy(
    engine: GenerationEngine, loaded: LoadedModel, penalty: float
) -> None:
    prompt = prompt_of(loaded)
    result = run(engine, prompt, GenerationParams(max_new_tokens=NEW, frequency_penalty=penalty))
    reference = greedy_with(loaded, prompt, HandFrequencyPenalty(penalty))
    assert_same(result, reference)
    assert reference.ids != plain_greedy(loaded, prompt)


def test_tgi_frequency_penalty_sampled_after_repetition_before_warpers(
    engine: GenerationEngine, loaded: LoadedModel
) -> None:
    import torch

    prompt = prompt_of(loaded)
    params = GenerationParams(
        max_new_tokens=NEW,
        do_sample=True,
        temperature=0.8,
        top_k=50,
        top_p=0.95,
        repetition_penalty=1.2,
        frequency_penalty=1.0,
        seed=77,
    )
    result = run(engine, prompt, params)
    sampling: dict[str, Any] = {"temperature": 0.8, "top_k": 50, "top_p": 0.95}
    torch.manual_seed(77)
    reference = generate_reference(
        loaded.model,
        prompt,
        do_sample=True,
        max_new_tokens=NEW,
        repetition_penalty=1.2,
        logits_processor=LogitsProcessorList([HandFrequencyPenalty(1.0)]),
        **sampling,
    )
    assert_same(result, reference)
    torch.manual_seed(77)
    unpenalized = generate_reference(
        loaded.model, prompt, do_sample=True, max_new_tokens=NEW, repetition_penalty=1.2, **sampling
    )
    assert reference.ids != unpenalized.ids


def test_openai_frequency_and_presence_penalties_count_generated_tokens_only(
    engine: GenerationEngine, loaded: LoadedModel
) -> None:
    prompt = prompt_of(loaded)
    params = GenerationParams(
        max_new_tokens=NEW, output_frequency_penalty=0.7, presence_penalty=0.9
    )
    result = run(engine, prompt, params)
    reference = greedy_with(loaded, prompt, HandOpenAIPenalties(len(prompt), 0.7, 0.9))
    assert_same(result, reference)
    assert reference.ids != plain_greedy(loaded, prompt)
    presence_only = run(engine, prompt, GenerationParams(max_new_tokens=NEW, presence_penalty=2.0))
    assert_same(presence_only, greedy_with(loaded, prompt, HandOpenAIPenalties(len(prompt), 0, 2)))
    assert len({t.id for t in presence_only.tokens}) > len(set(plain_greedy(loaded, prompt)))


def test_logit_bias(engine: GenerationEngine, loaded: LoadedModel) -> None:
    prompt = prompt_of(loaded, "hello")
    plain = plain_greedy(loaded, prompt)
    banned, forced = plain[0], 42
    bias = {banned: -100.0, forced: 3.5}
    result = run(engine, prompt, GenerationParams(max_new_tokens=NEW, logit_bias=bias.items()))
    reference = greedy_with(loaded, prompt, HandLogitBias(bias))
    assert_same(result, reference)
    assert banned not in reference.ids and reference.ids != plain
    always = run(engine, prompt, GenerationParams(max_new_tokens=8, logit_bias=[(forced, 100.0)]))
    assert [t.id for t in always.tokens] == [forced] * 8


def test_tgi_watermark(engine: GenerationEngine, loaded: LoadedModel) -> None:
    prompt = prompt_of(loaded, "a checkpoint registry")
    result = run(engine, prompt, GenerationParams(max_new_tokens=NEW, watermark=True))
    reference = greedy_with(loaded, prompt, HandWatermark())
    assert_same(result, reference)
    vocab = int(loaded.config.vocab_size)
    plain = plain_greedy(loaded, prompt)
    assert reference.ids != plain
    assert green_share(prompt, reference.ids, vocab) > 0.9
    assert green_share(prompt, plain, vocab) < green_share(prompt, reference.ids, vocab)


PENALIZED_ROWS = [
    ("the lazy dog says", GenerationParams(max_new_tokens=20, frequency_penalty=1.2)),
    (
        "weights",
        GenerationParams(
            max_new_tokens=18, do_sample=True, seed=5, frequency_penalty=-0.5, temperature=1.3
        ),
    ),
    ("hello world", GenerationParams(max_new_tokens=30, presence_penalty=1.0, watermark=True)),
]
SEEDED_PENALIZED = GenerationParams(
    max_new_tokens=24,
    do_sample=True,
    seed=1234,
    frequency_penalty=0.8,
    output_frequency_penalty=0.3,
    presence_penalty=0.4,
    logit_bias=[(7, 2.0)],
    repetition_penalty=1.1,
    top_k=40,
)


def test_penalized_rows_alone_equal_batched(engine: GenerationEngine, loaded: LoadedModel) -> None:
    prompt = prompt_of(loaded, "a checkpoint registry")
    rows = [(prompt_of(loaded, text), params) for text, params in PENALIZED_ROWS]

    async def together() -> list[GenerationResult]:
        return list(
            await asyncio.gather(
                *(engine.generate("tiny", p, params) for p, params in rows[:2]),
                engine.generate("tiny", prompt, SEEDED_PENALIZED),
                engine.generate("tiny", *rows[2]),
            )
        )

    alone = [run(engine, p, params) for p, params in rows[:2]]
    alone += [run(engine, prompt, SEEDED_PENALIZED), run(engine, *rows[2])]
    for batched, single in zip(asyncio.run(together()), alone, strict=True):
        assert [t.id for t in batched.tokens] == [t.id for t in single.tokens]
        assert [t.logprob for t in batched.tokens] == [t.logprob for t in single.tokens]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (GenerationParams(frequency_penalty=2.5), "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        (
            GenerationParams(frequency_penalty=float("nan")),
            "`frequency_penalty` must be >= -2.0 and <= 2.0",
        ),
        (GenerationParams(presence_penalty=-3), "`presence_penalty` must be >= -2.0 and <= 2.0"),
        (
            GenerationParams(output_frequency_penalty=9),
            "`output_frequency_penalty` must be >= -2.0 and <= 2.0",
        ),
        (
            GenerationParams(logit_bias=[(-1, 1.0)]),
            "`logit_bias` keys must be token ids (integers >= 0)",
        ),
        (
            GenerationParams(logit_bias=[(3, 101.0)]),
            "`logit_bias` values must be >= -100.0 and <= 100.0",
        ),
    ],
)
def test_penalty_validation(params: GenerationParams, message: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        params.validate_sampling()
    assert raised.value.message == message
    assert raised.value.status == 422
