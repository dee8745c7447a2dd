"""Tiny random causal language models of every family in the test matrix, each saved as a real
Hugging Face folder with a tokenizer (nothing can come from a model hub).

    build_family("qwen2", folder)                       # float32, tokenizer.json
    build_family("llama", folder, dtype="bfloat16", tokenizer="sentencepiece")
    build_family("gpt2", folder, tokenizer="vocab_merges", max_shard_size="200KB")

Every family shares one small shape (2 layers, hidden 64, 4 heads, 2 key/value heads where the
family has them) so the whole matrix builds in a second or two.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.models import CORPUS, build_tokenizer

VOCAB = 300


@dataclass(frozen=True)
class Family:
    model_type: str
    config_class: str
    fields: dict[str, Any]
    tied_by_default: bool


_SMALL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
_GQA = {**_SMALL, "num_key_value_heads": 2, "intermediate_size": 128}

FAMILIES: dict[str, Family] = {
    "llama": Family("llama", "LlamaConfig", {**_GQA, "max_position_embeddings": 128}, False),
    "mistral": Family(
        "mistral",
        "MistralConfig",
        {**_GQA, "max_position_embeddings": 128, "sliding_window": 16},
        False,
    ),
    "qwen2": Family("qwen2", "Qwen2Config", {**_GQA, "max_position_embeddings": 128}, False),
    "qwen3": Family(
        "qwen3", "Qwen3Config", {**_GQA, "max_position_embeddings": 128, "head_dim": 16}, False
    ),
    "gemma2": Family(
        "gemma2",
        "Gemma2Config",
        {**_GQA, "max_position_embeddings": 128, "head_dim": 16, "sliding_window": 16},
        True,
    ),
    "phi3": Family(
        "phi3",
        "Phi3Config",
        {**_GQA, "max_position_embeddings": 128, "original_max_position_embeddings": 128},
        False,
    ),
    "gpt_neox": Family(
        "gpt_neox",
        "GPTNeoXConfig",
        {**_SMALL, "intermediate_size": 128, "max_position_embeddings": 128},
        False,
    ),
    "opt": Family(
        "opt",
        "OPTConfig",
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "ffn_dim": 128,
            "word_embed_proj_dim": 64,
            "max_position_embeddings": 128,
        },
        True,
    ),
    "gpt2": Family(
        "gpt2", "GPT2Config", {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128}, True
    ),
}

TOKENIZER_KINDS = ("tokenizer.json", "vocab_merges", "sentencepiece")


# Special token ids of each tokenizer kind, so configs and tokenizers agree: the BPE tokenizers
# use <|endoftext|> (id 0) for both, the SentencePiece model <s> = 1 and </s> = 2.
SPECIAL_IDS = {
    "tokenizer.json": {"bos_token_id": 0, "eos_token_id": 0},
    "vocab_merges": {"bos_token_id": 0, "eos_token_id": 0},
    "sentencepiece": {"bos_token_id": 1, "eos_token_id": 2},
}


def family_config(family: str, *, tokenizer: str = "tokenizer.json", **overrides: Any) -> Any:
    import transformers

    spec = FAMILIES[family]
    config_class = getattr(transformers, spec.config_class)
    fields: dict[str, Any] = {"vocab_size": VOCAB, "pad_token_id": None, **SPECIAL_IDS[tokenizer]}
    fields.update(spec.fields)
    fields.update(overrides)
    return config_class(**fields)


def build_family_model(
    family: str,
    *,
    seed: int = 0,
    dtype: str = "float32",
    tokenizer: str = "tokenizer.json",
    **overrides: Any,
) -> Any:
    """A random model of `family` in eval mode; dtype `float32`, `bfloat16`, `float16` or
    `mixed` (bfloat16 matrices, float32 norms and 1-D tensors)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = family_config(family, tokenizer=tokenizer, **overrides)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            # Random norms and biases too (zeros/ones would hide mapping mistakes).
            if parameter.dim() == 1:
                parameter.add_(torch.randn_like(parameter) * 0.02)
    if dtype == "mixed":
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.data = parameter.data.to(torch.bfloat16)
    elif dtype != "float32":
        model = model.to(getattr(torch, dtype))
    return model


def build_family(
    family: str,
    folder: Path,
    *,
    dtype: str = "float32",
    tokenizer: str = "tokenizer.json",
    seed: int = 0,
    max_shard_size: str | None = None,
    eos_token_ids: list[int] | None = None,
    chat_template: str | None = None,
    **overrides: Any,
) -> Path:
    """Save a tiny `family` model with a tokenizer of `tokenizer` kind into `folder`."""
    model = build_family_model(family, seed=seed, dtype=dtype, tokenizer=tokenizer, **overrides)
    folder.mkdir(parents=True, exist_ok=True)
    if eos_token_ids is not None:
        model.generation_config.eos_token_id = eos_token_ids
    if max_shard_size is None:
        model.save_pretrained(folder)
    else:
        model.save_pretrained(folder, max_shard_size=max_shard_size)
    save_tokenizer(folder, tokenizer, chat_template=chat_template)
    return folder


def save_tokenizer(folder: Path, kind: str, *, chat_template: str | None = None) -> None:
    if kind == "tokenizer.json":
        tokenizer = build_tokenizer(VOCAB)
        if chat_template is not None:
            tokenizer.chat_template = chat_template
        tokenizer.save_pretrained(folder)
    elif kind == "vocab_merges":
        _save_vocab_merges(folder)
    elif kind == "sentencepiece":
        _save_sentencepiece(folder)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}")
    if chat_template is not None and kind != "tokenizer.json":
        _add_chat_template(folder, chat_template)


def _save_vocab_merges(folder: Path) -> None:
    """GPT-2's two files only: vocab.json + merges.txt, no tokenizer.json."""
    tokenizer = build_tokenizer(VOCAB)
    tokenizer.backend_tokenizer.model.save(str(folder))
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "model_max_length": 128,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _save_sentencepiece(folder: Path) -> None:
    """A tokenizer.model trained on the test corpus, as Llama-family folders ship it."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=VOCAB,
        model_type="bpe",
        bos_id=1,
        eos_id=2,
        unk_id=0,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 128,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def _add_chat_template(folder: Path, template: str) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["chat_template"] = template
    path.write_text(json.dumps(config))
