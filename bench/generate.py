"""Generation throughput over HTTP against plain `model.generate` in one process.

    .venv/bin/python bench/generate.py [--work DIR] [--repeat N] [--models gpt2,llama135m]
        [--serving-dtype bfloat16]

GPT-2 124M- and Llama-135M-shaped models with random weights, greedy decoding, a 16-token
prompt and 128 new tokens. `--serving-dtype bfloat16` serves the float32 checkpoints cast to
bfloat16 (CKPT_SERVING_DTYPE) against the same float32 floors. Floors, measured in the same
run: `model.generate` at batch 1 and batch 8, and one forward pass of the prompt (what the
first streamed token cannot beat). The server is a real `ckpt serve` process (embedded worker
off, so no verification competes for the two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.demo.corpus import generate_corpus, train_tokenizer
from bench.common import (
    gpt2_124m_folder,
    llama_135m_folder,
    markdown_table,
    running_server,
    timed,
)

PROMPT_TOKENS = 16
NEW_TOKENS = 128
CLIENTS = 8
MODELS = {"gpt2": gpt2_124m_folder, "llama135m": llama_135m_folder}


def sixteen_token_prompt(tokenizer: Any) -> str:
    """The shortest prefix of a fixed text that tokenizes to exactly PROMPT_TOKENS tokens."""
    text = "a checkpoint registry keeps 12 models; verified, served and diffed on 2 cores."
    for end in range(1, len(text) + 1):
        if len(tokenizer(text[:end])["input_ids"]) == PROMPT_TOKENS:
            return text[:end]
    raise RuntimeError(f"no prefix of the text has exactly {PROMPT_TOKENS} tokens")


def model_folder(work: Path, name: str) -> tuple[Path, Any]:
    folder = MODELS[name](work / name)
    tokenizer = train_tokenizer(generate_corpus(sentences=1000), vocab_size=300)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def zipped(folder: Path, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, file.name)
    return dest


def floors(folder: Path, prompt_ids: list[int], repeat: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    ids = torch.tensor([prompt_ids])

    def generate(batch: int) -> int:
        inputs = ids.repeat(batch, 1)
        with torch.inference_mode():
            out = model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                pad_token_id=0,
            )
        return int(out[:, ids.shape[1] :].numel())

    def prefill() -> None:
        with torch.inference_mode():
            model(ids)

    single_s, single_tokens = timed(lambda: generate(1), repeat)
    batch_s, batch_tokens = timed(lambda: generate(CLIENTS), repeat)
    forward_s, _ = timed(prefill, repeat * 5)
    return {
        "single_tps": single_tokens / single_s,
        "batch_tps": batch_tokens / batch_s,
        "forward_s": forward_s,
    }


def generate_body(prompt: str) -> dict[str, Any]:
    # min_new_tokens does not exist in TGI: random weights may emit EOS early, so the rates
    # below count the tokens actually generated.
    return {"inputs": prompt, "parameters": {"max_new_tokens": NEW_TOKENS, "do_sample": False}}


async def one_client(http: httpx.AsyncClient, ref: str, prompt: str) -> int:
    response = await http.post(f"/models/{ref}/generate", json=generate_body(prompt))
    response.raise_for_status()
    return int(response.headers["x-generated-tokens"])


async def clients(url: str, ref: str, prompt: str, count: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        start = time.perf_counter()
        tokens = await asyncio.gather(*(one_client(http, ref, prompt) for _ in range(count)))
        return sum(tokens) / (time.perf_counter() - start)


def first_token_seconds(url: str, ref: str, prompt: str) -> float:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": 2, "do_sample": False}}
    start = time.perf_counter()
    with httpx.stream("POST", f"{url}/models/{ref}/generate_stream", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                return time.perf_counter() - start
    raise RuntimeError("no event streamed")


def best_of(repeat: int, measure: Any) -> float:
    return max(measure() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="reuse generated files here")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--serving-dtype", default="stored", help="CKPT_SERVING_DTYPE")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-generate-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        print(f"## {name}, served in {args.serving_dtype}\n")
        print(measure_model(work, name, args.repeat, args.serving_dtype) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def measure_model(work: Path, name: str, repeat: int, serving_dtype: str) -> str:
    folder, tokenizer = model_folder(work, name)
    prompt = sixteen_token_prompt(tokenizer)
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    floor = floors(folder, prompt_ids, repeat)
    archive = zipped(folder, work / f"{name}.zip")
    ref = f"{name}-bench"
    env = {
        "CKPT_EMBEDDED_WORKER": "false",
        "CKPT_DEVICE": "cpu",
        "CKPT_SERVING_DTYPE": serving_dtype,
    }
    with running_server(work / f"data-{name}", **env) as (url, _):
        with archive.open("rb") as handle:
            httpx.post(
                f"{url}/v1/checkpoints",
                params={"name": ref},
                content=handle,
                headers={"Content-Type": "application/octet-stream"},
                timeout=600,
            ).raise_for_status()
        asyncio.run(clients(url, ref, prompt, 1))  # load the model: a cached model
        single = best_of(repeat, lambda: asyncio.run(clients(url, ref, prompt, 1)))
        many = best_of(repeat, lambda: asyncio.run(clients(url, ref, prompt, CLIENTS)))
        ttft = min(first_token_seconds(url, ref, prompt) for _ in range(repeat * 3))
    return f"prompt: {len(prompt_ids)} tokens, {NEW_TOKENS} new tokens, greedy, CPU\n\n" + (
        markdown_table(
            ["measure", "server (HTTP)", "floor (same run)", "ratio", "target"],
            [
                [
                    "tokens/s, 1 client",
                    f"{single:.1f}",
                    f"model.generate batch 1: {floor['single_tps']:.1f}",
                    f"{single / floor['single_tps']:.2f}x",
                    ">= 1.0x (bf16 serving: >= 1.8x)",
                ],
                [
                    f"tokens/s, {CLIENTS} clients",
                    f"{many:.1f}",
                    f"model.generate batch {CLIENTS}: {floor['batch_tps']:.1f}",
                    f"{many / single:.2f}x of 1 client",
                    ">= 3.5x",
                ],
                [
                    "first streamed token",
                    f"{ttft * 1000:.0f} ms",
                    f"one prompt forward: {floor['forward_s'] * 1000:.0f} ms",
                    f"{ttft / floor['forward_s']:.2f}x",
                    "<= 1.3x",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
