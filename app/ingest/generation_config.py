"""generation_config.json: the token ids and decoding defaults a model folder asks for.

Read as data and type-checked field by field; a list of eos ids stays a list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from app.errors import RejectedCheckpoint
from app.ingest.jsonutil import loads_strict

GENERATION_CONFIG = "generation_config.json"
CODE = "generation_config_invalid"
_MAX_FILE = 1 << 20
_MAX_EOS_IDS = 64
_MAX_TOKEN_ID = 1 << 31
_TOKEN_FIELDS = ("bos_token_id", "pad_token_id", "decoder_start_token_id")
# decoding defaults: (name, accepted types, lower bound, upper bound)
_DEFAULTS: tuple[tuple[str, tuple[type, ...], float, float], ...] = (
    ("max_length", (int,), 1, 1 << 24),
    ("max_new_tokens", (int,), 1, 1 << 24),
    ("do_sample", (bool,), 0, 1),
    ("temperature", (int, float), 0, 1e4),
    ("top_k", (int,), 0, 1 << 24),
    ("top_p", (int, float), 0, 1),
    ("repetition_penalty", (int, float), 0, 1e4),
    ("num_beams", (int,), 1, 1024),
)


def read_generation_config(folder: Path) -> dict[str, Any] | None:
    """The recorded generation settings, or None when the folder has no generation_config.json."""
    path = folder / GENERATION_CONFIG
    if not path.is_file():
        return None
    if path.stat().st_size > _MAX_FILE:
        raise RejectedCheckpoint(f"{GENERATION_CONFIG} is larger than 1 MiB", code=CODE)
    document = loads_strict(path.read_bytes(), what=GENERATION_CONFIG, code=CODE)
    if not isinstance(document, dict):
        raise RejectedCheckpoint(f"{GENERATION_CONFIG} must hold a JSON object", code=CODE)
    record: dict[str, Any] = {"eos_token_id": _eos_ids(document.get("eos_token_id"))}
    for name in _TOKEN_FIELDS:
        record[name] = _token_id(document.get(name), name)
    record["defaults"] = _defaults(document)
    return record


def note_ids_outside_vocabulary(record: dict[str, Any], vocab_size: int | None) -> None:
    """Ids the vocabulary lacks are recorded, not refused: GPT2Config's default eos 50256 is
    saved by every small-vocabulary GPT-2 trained from scratch, and transformers loads it."""
    if vocab_size is None:
        return
    eos = record["eos_token_id"]
    named = [*(eos if isinstance(eos, list) else [eos]), *(record[n] for n in _TOKEN_FIELDS)]
    outside = sorted({i for i in named if i is not None and i >= vocab_size})
    if outside:
        record["ids_outside_vocabulary"] = outside


def _eos_ids(value: Any) -> int | list[int] | None:
    if not isinstance(value, list):
        return _token_id(value, "eos_token_id")
    if not value or len(value) > _MAX_EOS_IDS:
        raise RejectedCheckpoint(
            f"{GENERATION_CONFIG}: eos_token_id lists 1 to {_MAX_EOS_IDS} ids", code=CODE
        )
    return [_required_id(item, "eos_token_id") for item in value]


def _token_id(value: Any, name: str) -> int | None:
    return None if value is None else _required_id(value, name)


def _required_id(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _MAX_TOKEN_ID:
        raise RejectedCheckpoint(
            f"{GENERATION_CONFIG}: {name} = {value!r} is not a token id (an integer from 0)",
            code=CODE,
        )
    return value


def _defaults(document: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, types, low, high in _DEFAULTS:
        value: Any = document.get(name)
        if value is None:
            continue
        wrong_type = isinstance(value, bool) and bool not in types
        if wrong_type or not isinstance(value, types) or not low <= cast(float, value) <= high:
            raise RejectedCheckpoint(
                f"{GENERATION_CONFIG}: {name} = {value!r} is out of range", code=CODE
            )
        found[name] = value
    return found
