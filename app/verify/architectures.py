"""What two checkpoints say they are, compared field by field whatever their families."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.verify.base import LoadedCheckpoint

# Each field under its names across families; a difference is named by the first name either
# side's config uses (GPT-2's n_head, Llama's num_attention_heads), and only once.
_HIDDEN = ("n_embd", "hidden_size")
_HEADS = ("n_head", "num_attention_heads")
_KV_HEADS = ("num_key_value_heads",)
_HEAD_DIM = ("head_dim",)
ARCHITECTURE_FIELDS: tuple[tuple[str, ...], ...] = (
    ("model_type",),
    ("n_layer", "num_hidden_layers"),
    _HIDDEN,
    _HEADS,
    _KV_HEADS,
    _HEAD_DIM,
    ("n_inner", "intermediate_size", "ffn_dim"),
    ("vocab_size",),
    ("n_positions", "max_position_embeddings"),
    ("tie_word_embeddings",),
)


def checkpoint_architecture(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """The stored summary, completed by the folder's own config.json (any family's names)."""
    fields = architecture_fields(loaded.view.architecture)
    config = _folder_config(loaded.folder)
    if config is not None:
        stated = architecture_fields(config)
        stated.pop("inferred")
        fields.update({name: value for name, value in stated.items() if value is not None})
    return fields


def _folder_config(folder: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def architecture_fields(architecture: dict[str, Any] | None) -> dict[str, Any]:
    """Every field of ARCHITECTURE_FIELDS under the first of its names that the source uses."""
    known = architecture or {}
    fields: dict[str, Any] = {}
    for names in ARCHITECTURE_FIELDS:
        name = next((n for n in names if known.get(n) is not None), names[0])
        fields[name] = known.get(name)
    fields["inferred"] = bool(known.get("inferred"))
    return fields


def architecture_differences(
    subject: dict[str, Any], reference: dict[str, Any] | None
) -> list[str]:
    """`n_head 1 vs 2` for every field both sides state and disagree on, named once."""
    if reference is None:
        return []
    differences = []
    for names in ARCHITECTURE_FIELDS:
        mine, theirs = _stated(subject, names), _stated(reference, names)
        if mine is None or theirs is None or mine[1] == theirs[1]:
            continue
        if all(_implied(names, side) for side in (subject, reference)):
            continue  # it follows from a field whose difference is named
        differences.append(f"{mine[0]} {mine[1]} vs {theirs[1]}")
    return differences


def _stated(fields: dict[str, Any], names: tuple[str, ...]) -> tuple[str, Any] | None:
    return next(((n, fields[n]) for n in names if fields.get(n) is not None), None)


def _value(fields: dict[str, Any], names: tuple[str, ...]) -> Any:
    stated = _stated(fields, names)
    return None if stated is None else stated[1]


def _implied(names: tuple[str, ...], fields: dict[str, Any]) -> bool:
    """Whether this field only follows from others on this side: key/value heads equal to the
    heads (no grouped-query attention), head_dim the hidden size over the heads."""
    heads = _value(fields, _HEADS)
    if names == _KV_HEADS:
        return bool(_value(fields, _KV_HEADS) == heads)
    if names == _HEAD_DIM:
        head_dim, hidden = _value(fields, _HEAD_DIM), _value(fields, _HIDDEN)
        return all(isinstance(v, int) for v in (head_dim, heads, hidden)) and (
            head_dim * heads == hidden
        )
    return False
