"""Every family of the matrix through one engine: greedy and seeded decoding bit-exact with
`model.generate` alone and inside a batch; batched (non-exact) steps to float tolerance."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from app.generation import (
    GenerationEngine,
    GenerationParams,
    GenerationResult,
    LoadedModel,
    ModelCache,
    load_model_folder,
)
from tests.families import FAMILIES, build_family
from tests.generation.conftest import CPU
from tests.generation.reference import Reference, assert_same, generate_reference

# (family, stored dtype): every family in float32, a few in half precision.
VARIANTS = [(family, "float32") for family in FAMILIES] + [
    ("llama", "bfloat16"),
    ("qwen2", "float16"),
    ("gemma2", "bfloat16"),
]
PROMPTS = [[5, 9, 31, 7, 8, 12], [44, 2], [3, 17, 101, 250, 4, 60, 61, 62, 63, 64, 65, 66]]
# Past mistral's and gemma2's 16-token sliding window, so the sliding layers are exercised.
NEW_TOKENS = [24, 30, 18]
SEEDED = {"do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.95}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("families")
    models = {
        f"{family}-{dtype}": load_model_folder(
            build_family(family, root / f"{family}-{dtype}", dtype=dtype), CPU
        )
        for family, dtype in VARIANTS
    }
    for (_family, dtype), loaded in zip(VARIANTS, models.values(), strict=True):
        assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}
    return models


def engine_over(models: dict[str, LoadedModel], exactness: str) -> GenerationEngine:
    cache = ModelCache(models.__getitem__, 1 << 32)
    return GenerationEngine(cache, CPU, exactness=exactness, product_threads=2)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def exact_engine(models: dict[str, LoadedModel]) -> Iterator[GenerationEngine]:
    engine = engine_over(models, "always")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def fast_engine(models: dict[str, LoadedModel]) -> Iterator[GenerationEngine]:
    engine = engine_over(models, "never")
    yield engine
    engine.close()


def variant_ids() -> list[str]:
    return [f"{family}-{dtype}" for family, dtype in VARIANTS]


def greedy_references(loaded: LoadedModel) -> list[Reference]:
    return [
        generate_reference(loaded.model, prompt, do_sample=False, max_new_tokens=new)
        for prompt, new in zip(PROMPTS, NEW_TOKENS, strict=True)
    ]


async def together(
    engine: GenerationEngine, model_id: str, params: list[GenerationParams]
) -> list[GenerationResult]:
    return list(
        await asyncio.gather(
            *(engine.generate(model_id, p, q) for p, q in zip(PROMPTS, params, strict=True))
        )
    )


def greedy(new: int) -> GenerationParams:
    return GenerationParams(max_new_tokens=new)


@pytest.mark.parametrize("model_id", variant_ids())
def test_greedy_alone_and_batched_equal_generate(
    exact_engine: GenerationEngine, models: dict[str, LoadedModel], model_id: str
) -> None:
    loaded = models[model_id]
    references = greedy_references(loaded)
    for prompt, new, reference in zip(PROMPTS, NEW_TOKENS, references, strict=True):
        alone = asyncio.run(exact_engine.generate(model_id, prompt, greedy(new)))
        assert_same(alone, reference)
    before = exact_engine.stats()
    batched = asyncio.run(together(exact_engine, model_id, [greedy(n) for n in NEW_TOKENS]))
    for result, reference in zip(batched, references, strict=True):
        assert_same(result, reference)
    assert exact_engine.stats().exact_steps > before.exact_steps  # really decoded together


@pytest.mark.parametrize("model_id", variant_ids())
def test_seeded_sample_equals_generate_alone_and_batched(
    exact_engine: GenerationEngine, models: dict[str, LoadedModel], model_id: str
) -> None:
    params = [
        GenerationParams(max_new_tokens=n, seed=7 + i, **SEEDED) for i, n in enumerate(NEW_TOKENS)
    ]
    torch.manual_seed(8)
    reference = generate_reference(
        models[model_id].model, PROMPTS[1], max_new_tokens=NEW_TOKENS[1], **SEEDED
    )
    alone = asyncio.run(exact_engine.generate(model_id, PROMPTS[1], params[1]))
    assert_same(alone, reference)
    batched = asyncio.run(together(exact_engine, model_id, params))[1]
    assert_same(batched, reference)


@pytest.mark.parametrize("model_id", variant_ids())
def test_batched_steps_stay_close_to_generate(
    fast_engine: GenerationEngine, models: dict[str, LoadedModel], model_id: str
) -> None:
    """One forward for all rows: the same tokens, logprobs to the dtype's rounding."""
    before = fast_engine.stats()
    results = asyncio.run(together(fast_engine, model_id, [greedy(n) for n in NEW_TOKENS]))
    after = fast_engine.stats()
    assert after.decode_steps - before.decode_steps < after.decoded_rows - before.decoded_rows
    tolerance = 1e-4 if model_id.endswith("float32") else 5e-2
    for result, reference in zip(results, greedy_references(models[model_id]), strict=True):
        assert [t.id for t in result.tokens] == reference.ids
        got = torch.tensor([t.logprob for t in result.tokens])
        torch.testing.assert_close(got, torch.tensor(reference.logprobs), rtol=0, atol=tolerance)


def test_eos_id_lists_from_generation_config_stop(tmp_path: Path) -> None:
    """generation_config.json with a list of EOS ids: whichever comes first stops, as in
    `generate`."""
    plain = load_model_folder(build_family("llama", tmp_path / "plain"), CPU)
    expected = generate_reference(plain.model, PROMPTS[0], do_sample=False, max_new_tokens=20)
    stop = expected.ids[5]
    assert stop not in expected.ids[:5]
    folder = build_family("llama", tmp_path / "eos", eos_token_ids=[299, stop])
    loaded = load_model_folder(folder, CPU)
    assert loaded.model.generation_config.eos_token_id == [299, stop]
    engine = engine_over({"eos": loaded}, "seeded")
    try:
        result = asyncio.run(engine.generate("eos", PROMPTS[0], greedy(20)))
    finally:
        engine.close()
    assert result.finish_reason == "eos_token"
    assert [t.id for t in result.tokens] == expected.ids[:6]
    assert_same(result, generate_reference(loaded.model, PROMPTS[0], max_new_tokens=20))
