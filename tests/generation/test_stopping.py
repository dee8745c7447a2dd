"""Why generation stops: max_new_tokens, the context, EOS, stop sequences."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import torch

from app.generation import (
    FinishEvent,
    GenerationEngine,
    GenerationParams,
    GenerationResult,
    LoadedModel,
    TokenEvent,
    ValidationFailed,
    load_model_folder,
)
from tests.generation.conftest import CPU, TinyFolder, single_model_cache
from tests.generation.reference import assert_same, greedy_reference


def prompt_of(loaded: LoadedModel, text: str) -> list[int]:
    ids: list[int] = loaded.tokenizer(text)["input_ids"]
    return ids


def test_stop_sequence_spanning_tokens(engine: GenerationEngine, loaded: LoadedModel) -> None:
    prompt = prompt_of(loaded, "a checkpoint registry keeps trained")
    sampled = GenerationParams(max_new_tokens=30, do_sample=True, seed=1)  # varied text
    full = asyncio.run(engine.generate("tiny", prompt, sampled))
    texts = [t.text for t in full.tokens]
    # A stop sequence made of the end of one token's text and the start of the next one's.
    k = next(i for i in range(2, len(texts) - 1) if texts[i] and texts[i + 1])
    stop = texts[k][-1:] + texts[k + 1][:1]
    first_end = "".join(texts).find(stop) + len(stop)
    stops_at = next(i for i in range(len(texts)) if len("".join(texts[: i + 1])) >= first_end)

    params = dataclasses.replace(sampled, stop=["never generated", stop])
    result = asyncio.run(engine.generate("tiny", prompt, params))
    assert result.finish_reason == "stop_sequence"
    assert [t.id for t in result.tokens] == [t.id for t in full.tokens[: stops_at + 1]]
    # Like TGI, the stop sequence stays in the generated text (nothing is cut off).
    assert result.generated_text == "".join(texts[: stops_at + 1])
    assert stop in result.generated_text


def test_stop_sequence_not_generated(engine: GenerationEngine, loaded: LoadedModel) -> None:
    prompt = prompt_of(loaded, "hello")
    params = GenerationParams(max_new_tokens=12, stop=["never in a tiny model §"])
    result = asyncio.run(engine.generate("tiny", prompt, params))
    assert result.finish_reason == "length"
    assert result.generated_tokens == 12


def test_eos_token(tiny_folder: TinyFolder) -> None:
    """A model whose every output favours EOS (id 0): one special token, an empty text."""
    loaded = load_model_folder(tiny_folder.folder, CPU)
    with torch.no_grad():
        wte = loaded.model.transformer.wte.weight  # tied with the LM head
        loaded.model.transformer.ln_f.bias.copy_(wte[0] * 50 / wte[0].norm() ** 2)
    prompt = prompt_of(loaded, "hello world")
    result = run_alone(loaded, prompt, GenerationParams(max_new_tokens=10))
    assert result.finish_reason == "eos_token"
    assert [(t.id, t.text, t.special) for t in result.tokens] == [(0, "<|endoftext|>", True)]
    assert result.generated_text == ""  # special tokens skipped, as TGI does
    assert_same(result, greedy_reference(loaded.model, prompt, 10))


def test_eos_from_generation_config(tiny_folder: TinyFolder, loaded: LoadedModel) -> None:
    """The EOS `generate` uses (generation config) stops the engine where it stops generate."""
    prompt = prompt_of(loaded, "the quick brown fox")
    reference = greedy_reference(loaded.model, prompt, 20)
    eos = reference.ids[6]
    other = load_model_folder(tiny_folder.folder, CPU)
    other.model.generation_config.eos_token_id = eos
    result = run_alone(other, prompt, GenerationParams(max_new_tokens=20))
    assert result.finish_reason == "eos_token"
    assert result.tokens[-1].id == eos
    assert_same(result, greedy_reference(other.model, prompt, 20))


def test_length_wins_over_eos_on_the_last_token(tiny_folder: TinyFolder) -> None:
    """TGI checks the length limit before EOS."""
    loaded = load_model_folder(tiny_folder.folder, CPU)
    prompt = prompt_of(loaded, "hello world")
    first = greedy_reference(loaded.model, prompt, 1).ids[0]
    loaded.model.generation_config.eos_token_id = first
    assert run_alone(loaded, prompt, GenerationParams(max_new_tokens=1)).finish_reason == "length"
    assert run_alone(loaded, prompt, GenerationParams(max_new_tokens=2)).finish_reason == (
        "eos_token"
    )


def test_context_length(engine: GenerationEngine, loaded: LoadedModel) -> None:
    context = loaded.context_length
    assert context == 64
    prompt = (prompt_of(loaded, "the quick brown fox jumps over the lazy dog ") * 8)[:60]
    unbounded = asyncio.run(engine.generate("tiny", prompt, GenerationParams()))
    assert (unbounded.finish_reason, unbounded.generated_tokens) == ("length", 4)
    too_many = GenerationParams(max_new_tokens=10)
    # The engine stops at the context; TGI's validation (for the HTTP layer) rejects it.
    capped = asyncio.run(engine.generate("tiny", prompt, too_many))
    assert (capped.finish_reason, capped.generated_tokens) == ("length", 4)
    assert [t.id for t in capped.tokens] == [t.id for t in unbounded.tokens]
    with pytest.raises(ValidationFailed, match=r"must be <= 64\. Given: 60 `inputs` tokens"):
        engine.validate(loaded, prompt, too_many)
    with pytest.raises(ValidationFailed, match="must have less than 64 tokens"):
        asyncio.run(engine.stream("tiny", prompt * 2, GenerationParams()))


def test_token_texts_concatenate_to_the_decode(
    engine: GenerationEngine, loaded: LoadedModel
) -> None:
    prompt = prompt_of(loaded, "weights, outputs and")
    params = GenerationParams(
        max_new_tokens=25, do_sample=True, seed=11, decoder_input_details=True
    )
    result = asyncio.run(engine.generate("tiny", prompt, params))
    ids = [t.id for t in result.tokens]
    assert "".join(t.text for t in result.tokens) == loaded.tokenizer.decode(ids)
    assert result.generated_text == loaded.tokenizer.decode(ids, skip_special_tokens=True)


def test_decoder_input_details(engine: GenerationEngine, loaded: LoadedModel) -> None:
    prompt = prompt_of(loaded, "the model says hello")
    params = GenerationParams(max_new_tokens=3, decoder_input_details=True, top_n_tokens=2)
    result = asyncio.run(engine.generate("tiny", prompt, params))
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([prompt])).logits[0]
    expected = torch.log_softmax(logits, dim=-1)
    assert [p.id for p in result.prefill] == prompt
    assert result.prefill[0].logprob is None
    for position, prefill in enumerate(result.prefill[1:], start=1):
        assert prefill.logprob == pytest.approx(float(expected[position - 1, prefill.id]), abs=1e-5)
    assert [p.text for p in result.prefill] == [loaded.tokenizer.decode([i]) for i in prompt]
    for token in result.tokens:  # greedy: the chosen token is the best alternative
        assert len(token.top_tokens) == 2
        assert token.top_tokens[0].id == token.id
        assert token.top_tokens[0].logprob == token.logprob >= token.top_tokens[1].logprob


def test_timings(engine: GenerationEngine, loaded: LoadedModel) -> None:
    result = asyncio.run(
        engine.generate("tiny", prompt_of(loaded, "hello"), GenerationParams(max_new_tokens=5))
    )
    timings = result.timings
    assert 0 <= timings.queue <= timings.first_token <= timings.total
    assert timings.inference <= timings.total
    assert timings.time_per_token == pytest.approx(timings.inference / 5)
    assert dataclasses.asdict(timings).keys() == {
        "queue",
        "first_token",
        "inference",
        "time_per_token",
        "total",
    }


def run_alone(loaded: LoadedModel, prompt: list[int], params: GenerationParams) -> GenerationResult:
    engine = GenerationEngine(single_model_cache(loaded), CPU)
    try:
        return asyncio.run(engine.generate("tiny", prompt, params))
    finally:
        engine.close()


def test_a_stream_tells_its_last_token_without_waiting(
    engine: GenerationEngine, loaded: LoadedModel
) -> None:
    """finish_after() answers at once: None after each token but the last, the finish event
    after the last (so a TGI stream sends every token the moment it exists)."""

    async def run() -> list[FinishEvent | None]:
        answers: list[FinishEvent | None] = []
        prompt = prompt_of(loaded, "hello")
        async with await engine.stream("tiny", prompt, GenerationParams(max_new_tokens=4)) as s:
            async for event in s:
                if isinstance(event, TokenEvent):
                    answers.append(s.finish_after())
        return answers

    answers = asyncio.run(run())
    assert answers[:3] == [None, None, None]
    last = answers[3]
    assert isinstance(last, FinishEvent) and last.generated_tokens == 4
