"""Describe (and sanity-check) the tokenizer files of a model folder without running them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.errors import RejectedCheckpoint
from app.ingest.jsonutil import loads_strict

TOKENIZER_CODE = "tokenizer_invalid"
_MAX_TOKENIZER_FILE = 512 << 20


def describe_tokenizer(folder: Path) -> dict[str, Any]:
    fast = folder / "tokenizer.json"
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if fast.is_file():
        document = _load_json(fast)
        model = document.get("model") if isinstance(document, dict) else None
        if not isinstance(model, dict) or "type" not in model:
            raise RejectedCheckpoint(
                "tokenizer.json is not a tokenizers document (no model.type)", code=TOKENIZER_CODE
            )
        size = _vocab_size(model.get("vocab"), "tokenizer.json model.vocab")
        size += _added_outside_vocab(model.get("vocab"), document.get("added_tokens"))
        return {"present": True, "kind": f"tokenizers:{model['type']}", "vocab_size": size}
    if vocab.is_file() and merges.is_file():
        document = _load_json(vocab)
        if not isinstance(document, dict):
            raise RejectedCheckpoint(
                "vocab.json must map tokens to ids (a JSON object)", code=TOKENIZER_CODE
            )
        size = _vocab_size(document, "vocab.json")
        _check_merges(merges)
        return {"present": True, "kind": "bpe:vocab+merges", "vocab_size": size}
    return {"present": False, "kind": None, "vocab_size": None}


def _load_json(path: Path) -> Any:
    if path.stat().st_size > _MAX_TOKENIZER_FILE:
        raise RejectedCheckpoint(f"{path.name} is larger than 512 MiB", code=TOKENIZER_CODE)
    return loads_strict(path.read_bytes(), what=path.name, code=TOKENIZER_CODE)


def _vocab_size(vocab: Any, what: str) -> int:
    if isinstance(vocab, dict):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in vocab.values()):
            raise RejectedCheckpoint(f"{what} maps tokens to non-integers", code=TOKENIZER_CODE)
        return len(vocab)
    if isinstance(vocab, list):  # Unigram: [[piece, score], ...]
        return len(vocab)
    raise RejectedCheckpoint(f"{what} is not a vocabulary", code=TOKENIZER_CODE)


def _added_outside_vocab(vocab: Any, added: Any) -> int:
    """Added tokens usually reuse ids of the vocabulary; only new ids grow it."""
    if not isinstance(added, list):
        return 0
    known = set(vocab.values()) if isinstance(vocab, dict) else set(range(len(vocab or [])))
    ids = {token.get("id") for token in added if isinstance(token, dict)}
    return len(ids - known)


def _check_merges(path: Path) -> None:
    if path.stat().st_size > _MAX_TOKENIZER_FILE:
        raise RejectedCheckpoint("merges.txt is larger than 512 MiB", code=TOKENIZER_CODE)
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedCheckpoint("merges.txt is not UTF-8 text", code=TOKENIZER_CODE) from exc
