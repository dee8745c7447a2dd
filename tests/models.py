"""Tiny GPT-2 models and tokenizers built locally (nothing can come from a model hub)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a checkpoint registry keeps trained models safe",
    "hello world, the model says hello back",
    "weights, outputs and hashes must match exactly",
] * 25


def build_tokenizer(vocab_size: int = 300) -> Any:
    from app.demo.corpus import train_tokenizer

    return train_tokenizer("\n".join(CORPUS), vocab_size)


def build_gpt2(vocab_size: int, *, seed: int = 0, n_layer: int = 2, n_embd: int = 128) -> Any:
    """Heads are 64 wide as in every GPT-2, so a config inferred from shapes matches."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_embd // 64,
        vocab_size=vocab_size,
        n_positions=64,
        bos_token_id=vocab_size - 1 if vocab_size < 300 else 0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def save_model_folder(model: Any, tokenizer: Any, folder: Path) -> Path:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "version.txt").write_text("1.0.0\n")
    return folder


def zip_folder(
    folder: Path,
    dest: Path,
    *,
    top: str | None = "my_model",
    compression: int = zipfile.ZIP_STORED,
    extra: dict[str, bytes] | None = None,
) -> Path:
    """Zip `folder` like `zip -r model.zip my_model/` (one folder deep unless top is None)."""
    with zipfile.ZipFile(dest, "w", compression=compression) as archive:
        prefix = f"{top}/" if top else ""
        if top:
            archive.writestr(zipfile.ZipInfo(prefix), b"")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return dest
