"""Engine throughput on a random model, against plain `model.generate`.

    .venv/bin/python -m bench.engine [--model gpt2|llama135m|tiny] [--threads 2] \
        [--repeat 3] [--concurrent 8] [--modes invariant,batched]

Models: GPT-2 124M's shape, Llama-135M's (SmolLM), or a tiny Llama (2 layers, hidden 64) that
shows the per-step overhead.

Reports (best of --repeat, runs interleaved so a noisy neighbour hurts both sides alike):
batch-1 tokens/s of generate and of the engine, time to first token against one prefill
forward, and the aggregate tokens/s of 8 concurrent requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from app.generation import GenerationEngine, GenerationParams, LoadedModel, ModelCache
from bench.common import LLAMA_135M

PROMPT_TOKENS = 16
NEW_TOKENS = 128


def build_tokenizer_50257() -> Any:
    """A byte-level BPE with GPT-2's vocabulary size, trained on synthetic words (seconds)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    syllables = ["".join(rng.choices(letters, k=rng.randint(1, 4))) for _ in range(3000)]
    words = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(60000)]
    corpus = [" ".join(rng.choices(words, k=30)) for _ in range(20000)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=50257,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    eos = "<|endoftext|>"
    return GPT2TokenizerFast(tokenizer_object=tokenizer, bos_token=eos, eos_token=eos)


TINY_LLAMA: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    # GPT-2's vocabulary: the bench tokenizer's EOS (id 0), which the engine stops on when the
    # model has none, is then as unlikely a pick as in the other models.
    "vocab_size": 50257,
}


def build_model(name: str) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # No EOS: every run generates exactly NEW_TOKENS, in generate and in the engine alike.
    no_eos: dict[str, Any] = {"eos_token_id": None, "bos_token_id": None}
    builders: dict[str, Callable[[], Any]] = {
        "gpt2": lambda: GPT2LMHeadModel(GPT2Config(**no_eos)),
        "llama135m": lambda: LlamaForCausalLM(LlamaConfig(**LLAMA_135M, **no_eos)),
        "tiny": lambda: LlamaForCausalLM(LlamaConfig(**TINY_LLAMA, **no_eos)),
    }
    model: Any = builders[name]()
    model.eval()
    model.generation_config.eos_token_id = None
    return model


def best_of(repeat: int, run: Callable[[], float]) -> tuple[float, list[float]]:
    samples = [run() for _ in range(repeat)]
    return min(samples), samples


def time_generate(model: Any, prompt: list[int]) -> float:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0)
    elapsed = time.perf_counter() - start
    assert out.shape[1] == len(prompt) + NEW_TOKENS
    return elapsed


def time_prefill(model: Any, prompt: list[int]) -> float:
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        model(ids, use_cache=True, logits_to_keep=1)
    return time.perf_counter() - start


async def engine_single(engine: GenerationEngine, prompt: list[int]) -> tuple[float, float]:
    params = GenerationParams(max_new_tokens=NEW_TOKENS)
    start = time.perf_counter()
    result = await engine.generate("bench", prompt, params)
    elapsed = time.perf_counter() - start
    assert result.generated_tokens == NEW_TOKENS
    return elapsed, result.timings.first_token


async def engine_concurrent(engine: GenerationEngine, prompts: list[list[int]]) -> float:
    """All the prompts at once."""
    params = GenerationParams(max_new_tokens=NEW_TOKENS)
    start = time.perf_counter()
    results = await asyncio.gather(*(engine.generate("bench", p, params) for p in prompts))
    elapsed = time.perf_counter() - start
    assert all(r.generated_tokens == NEW_TOKENS for r in results)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["gpt2", "llama135m", "tiny"], default="gpt2")
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--modes",
        default="invariant,batched",
        help="invariant (bit-exact), invariant-1 (exact rows on one thread), batched, "
        "transformers-cb (transformers' own continuous batching, generate_batch, for comparison)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = build_model(args.model), build_tokenizer_50257()
    loaded = LoadedModel.of(model, tokenizer)
    rng = random.Random(1)
    vocab = int(model.config.vocab_size)
    prompts = [[rng.randrange(vocab) for _ in range(PROMPT_TOKENS)] for _ in range(args.concurrent)]
    time_generate(model, prompts[0])  # warm-up
    print(
        f"torch threads {torch.get_num_threads()}, {NEW_TOKENS} new tokens, prompt {PROMPT_TOKENS}"
    )
    prefill, _ = best_of(5, lambda: time_prefill(model, prompts[0]))
    print(f"one prefill forward: {prefill * 1000:.1f} ms")
    for mode in args.modes.split(","):
        if mode == "transformers-cb":
            report_transformers_cb(model, prompts, args.repeat)
            continue
        cache = ModelCache(lambda _: loaded, budget_bytes=1 << 40)
        engine = GenerationEngine(
            cache,
            torch.device("cpu"),
            max_queue=64,
            max_batch=args.concurrent,
            exactness="always" if mode.startswith("invariant") else "never",
            product_threads=1 if mode == "invariant-1" else None,
        )
        print(f"load average before [{mode}]: {os.getloadavg()[0]:.2f}")
        report(mode, engine, model, prompts, args.repeat)
        engine.close()
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def report(
    mode: str, engine: GenerationEngine, model: Any, prompts: list[list[int]], repeat: int
) -> None:
    generate_s: list[float] = []
    single_s: list[float] = []
    first_token_s: list[float] = []
    for _ in range(repeat):  # interleaved: generate, engine alone
        generate_s.append(time_generate(model, prompts[0]))
        elapsed, first = asyncio.run(engine_single(engine, prompts[0]))
        single_s.append(elapsed)
        first_token_s.append(first)
    concurrent_s = [asyncio.run(engine_concurrent(engine, prompts)) for _ in range(repeat)]
    generate_tps = NEW_TOKENS / min(generate_s)
    single_tps = NEW_TOKENS / min(single_s)
    concurrent = len(prompts)
    concurrent_tps = concurrent * NEW_TOKENS / min(concurrent_s)
    print(f"[{mode}] generate batch-1:  {generate_tps:6.2f} tok/s  (runs {fmt(generate_s)})")
    print(
        f"[{mode}] engine batch-1:    {single_tps:6.2f} tok/s  = {single_tps / generate_tps:.2f}x"
        f" generate  (runs {fmt(single_s)})"
    )
    print(
        f"[{mode}] engine TTFT:       {min(first_token_s) * 1000:.1f} ms best,"
        f" {statistics.median(first_token_s) * 1000:.1f} ms median"
    )
    print(
        f"[{mode}] engine {concurrent} concurrent: {concurrent_tps:6.2f} tok/s aggregate"
        f" = {concurrent_tps / single_tps:.2f}x engine batch-1"
        f" = {concurrent_tps / generate_tps:.2f}x generate batch-1  (runs {fmt(concurrent_s)})"
    )


def report_transformers_cb(model: Any, prompts: list[list[int]], repeat: int) -> None:
    """transformers' continuous batching (paged attention, `generate_batch`) on the same prompts:
    aggregate tokens/s (the first call, which sets up the paged cache, timed apart) and how many
    of its sequences equal `generate` batch 1's tokens."""
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    samples, outputs = [], {}
    for _ in range(repeat + 1):
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = model.generate_batch(
                prompts, generation_config=config, persistent_manager=True
            )
        samples.append(time.perf_counter() - start)
    model.destroy_cached_continuous_batching_manager()
    tokens = len(prompts) * NEW_TOKENS
    generated = [list(out.generated_tokens) for out in outputs.values()]
    with torch.inference_mode():
        expected = [
            model.generate(
                torch.tensor([p]), do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0
            )[0, len(p) :].tolist()
            for p in prompts
        ]
    same = sum(sorted(map(tuple, generated)).count(tuple(e)) > 0 for e in expected)
    print(
        f"[transformers-cb] {len(prompts)} prompts: first call (paged cache set up) "
        f"{samples[0]:.1f} s; then {tokens / min(samples[1:]):6.2f} tok/s aggregate "
        f"(runs {fmt(samples[1:])}); sequences equal to generate batch-1: {same}/{len(prompts)}"
    )


def fmt(samples: list[float]) -> str:
    return ", ".join(f"{s:.2f}s" for s in samples)


if __name__ == "__main__":
    main()
