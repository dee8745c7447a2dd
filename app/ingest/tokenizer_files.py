"""Describe (and sanity-check) the tokenizer files of a model folder without running them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.errors import RejectedCheckpoint
from app.ingest.jsonutil import loads_strict
from app.ingest.sentencepiece_model import SENTENCEPIECE_MODEL, describe_sentencepiece

TOKENIZER_CODE = "tokenizer_invalid"
_MAX_TOKENIZER_FILE = 512 << 20
_MAX_SETTINGS_FILE = 16 << 20
_ROLES = ("bos", "eos", "pad", "unk")
_SETTINGS_FILES = ("tokenizer_config.json", "special_tokens_map.json")
_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def no_tokenizer() -> dict[str, Any]:
    return {
        "present": False,
        "kind": None,
        "vocab_size": None,
        "special_tokens": None,
        "chat_template": False,
    }


def describe_tokenizer(folder: Path) -> dict[str, Any]:
    """{present, kind, vocab_size, special_tokens {bos, eos, pad, unk}, chat_template}.

    Every tokenizer file present is checked (a corrupt tokenizer.model beside a good
    tokenizer.json is still refused); the kind is the one transformers would load first.
    """
    sentencepiece = (folder / SENTENCEPIECE_MODEL).is_file()
    piece_model = describe_sentencepiece(folder / SENTENCEPIECE_MODEL) if sentencepiece else None
    found = _describe_vocabulary(folder)
    if found is None and piece_model is not None:
        found = {"present": True, "kind": "sentencepiece", "vocab_size": piece_model["vocab_size"]}
    if found is None:
        return no_tokenizer()
    settings = [_settings(folder / name) for name in _SETTINGS_FILES]
    defaults = piece_model["special_tokens"] if piece_model else dict.fromkeys(_ROLES)
    found["special_tokens"] = {
        role: _special_token(settings, role) or defaults[role] for role in _ROLES
    }
    found["chat_template"] = _has_chat_template(folder, settings[0])
    return found


def _describe_vocabulary(folder: Path) -> dict[str, Any] | None:
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
    return None


def _settings(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    if path.stat().st_size > _MAX_SETTINGS_FILE:
        raise RejectedCheckpoint(f"{path.name} is larger than 16 MiB", code=TOKENIZER_CODE)
    document = loads_strict(path.read_bytes(), what=path.name, code=TOKENIZER_CODE)
    if not isinstance(document, dict):
        raise RejectedCheckpoint(f"{path.name} must hold a JSON object", code=TOKENIZER_CODE)
    return document


def _special_token(settings: list[dict[str, Any]], role: str) -> str | None:
    """The token text: settings hold a string or an AddedToken-like {"content": ...}."""
    for document in settings:
        value = document.get(f"{role}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > 1000:
            raise RejectedCheckpoint(
                f"the tokenizer settings' {role}_token is not a token string", code=TOKENIZER_CODE
            )
        return value
    return None


def _has_chat_template(folder: Path, settings: dict[str, Any]) -> bool:
    template = settings.get("chat_template")
    if template is not None and not isinstance(template, str | list):
        raise RejectedCheckpoint(
            "tokenizer_config.json chat_template must be a string or a list of named templates",
            code=TOKENIZER_CODE,
        )
    return bool(template) or any((folder / name).is_file() for name in _TEMPLATE_FILES)


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
