"""Family-neutral architecture summary of a config, and size bounds every family must meet.

Values are read from transformers' config object when the model_type is a causal LM (so its
defaults and attribute aliases apply: GPT-2's n_embd is hidden_size), else from the JSON itself.
Every size is bounded before any model is built from the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from app.errors import RejectedCheckpoint

CONFIG_CODE = "config_invalid"
MAX_PARAMETERS = 1 << 40
_MAX_ANY_INT = 1 << 32
_MAX_MODULE_BLOCKS = 16_384  # layers x experts: bounds the time a meta-device build takes

# (summary field, names configs use for it, upper bound)
SIZE_FIELDS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("num_layers", ("num_hidden_layers", "n_layer", "n_layers", "num_layers"), 1024),
    ("hidden_size", ("hidden_size", "n_embd", "d_model"), 65_536),
    ("num_attention_heads", ("num_attention_heads", "n_head", "n_heads"), 1024),
    ("num_key_value_heads", ("num_key_value_heads", "num_kv_heads", "n_head_kv"), 1024),
    ("head_dim", ("head_dim",), 65_536),
    ("intermediate_size", ("intermediate_size", "n_inner", "ffn_dim", "d_ff"), 1 << 20),
    ("vocab_size", ("vocab_size",), 4_000_000),
    (
        "context_length",
        ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"),
        4_194_304,
    ),
    ("num_experts", ("num_local_experts", "num_experts", "n_routed_experts"), 1024),
)
_LEARNED_POSITIONS = ("wpe.", "embed_positions.", "position_embeddings.")
Getter = Callable[[str], Any]


def check_integers_bounded(value: Any, where: str = "config", depth: int = 0) -> None:
    """No integer anywhere in a config may be astronomically large (nested up to 4 levels)."""
    if depth > 4:
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            check_integers_bounded(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for item in value[:4096]:
            check_integers_bounded(item, where, depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_ANY_INT:
        raise RejectedCheckpoint(
            f"{where} = {value} is out of any sensible range", code=CONFIG_CODE
        )


def sizes(get: Getter) -> dict[str, int | None]:
    """Each size field, type- and range-checked; None where the config does not say."""
    return {field: bounded_int(get, names, bound) for field, names, bound in SIZE_FIELDS}


def bounded_int(
    get: Getter, names: tuple[str, ...], bound: int, where: str = "config"
) -> int | None:
    """The first of `names` the config sets, which must be a positive integer up to `bound`."""
    for name in names:
        value = get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= bound:
            raise RejectedCheckpoint(
                f"{where}.{name} = {value!r} is not a positive integer of at most {bound}",
                code=CONFIG_CODE,
            )
        return value
    return None


def check_model_size(found: Mapping[str, int | None]) -> None:
    """Refuse configs whose model is absurdly large, before anything is built from them."""
    layers, hidden = found["num_layers"] or 1, found["hidden_size"] or 1
    experts = found["num_experts"] or 1
    intermediate = found["intermediate_size"] or 4 * hidden
    if layers * experts > _MAX_MODULE_BLOCKS:
        raise RejectedCheckpoint(
            f"config describes {layers} layers of {experts} experts: more blocks than any "
            "checkpoint this service accepts",
            code=CONFIG_CODE,
        )
    estimate = layers * (4 * hidden**2 + 3 * hidden * intermediate * experts)
    estimate += 2 * (found["vocab_size"] or 0) * hidden
    if estimate > MAX_PARAMETERS:
        raise RejectedCheckpoint(
            f"config describes a model of about {estimate:.3g} parameters, beyond any "
            "checkpoint this service accepts",
            code=CONFIG_CODE,
        )


def neutral_summary(
    raw: Mapping[str, Any], get: Getter, tensor_names: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The family-neutral fields (and GPT-2's names for them, for existing clients)."""
    found = sizes(get)
    hidden, heads = found["hidden_size"], found["num_attention_heads"]
    if found["head_dim"] is None and hidden and heads:
        found["head_dim"] = hidden // heads
    if found["num_key_value_heads"] is None:
        found["num_key_value_heads"] = heads
    if found["intermediate_size"] is None and raw.get("model_type") == "gpt2" and hidden:
        found["intermediate_size"] = 4 * hidden
    summary: dict[str, Any] = {
        "architectures": _architectures(raw),
        **{k: v for k, v in found.items() if k != "num_experts"},
        "positional": _positional(raw, get, tensor_names),
        "tie_word_embeddings": _flag(get("tie_word_embeddings")),
        "dtype": _dtype(raw),
    }
    if found["num_experts"] is not None:
        summary["num_experts"] = found["num_experts"]
    summary.update(
        n_layer=found["num_layers"],
        n_embd=hidden,
        n_head=heads,
        n_positions=found["context_length"],
    )
    return summary


def _architectures(raw: Mapping[str, Any]) -> list[str] | None:
    names = raw.get("architectures")
    if names is None:
        return None
    if not isinstance(names, list) or not all(
        isinstance(n, str) and len(n) <= 200 for n in names[:8]
    ):
        raise RejectedCheckpoint(
            "config.architectures must be a list of class names", code=CONFIG_CODE
        )
    return list(names[:8])


def _positional(raw: Mapping[str, Any], get: Getter, tensor_names: frozenset[str]) -> Any:
    attn = raw.get("attn_config")
    if (
        get("alibi") is True
        or raw.get("model_type") == "bloom"
        or (isinstance(attn, Mapping) and attn.get("alibi") is True)
    ):
        return {"kind": "alibi"}
    if any(part in name for name in tensor_names for part in _LEARNED_POSITIONS):
        return {"kind": "learned"}
    rope = get("rope_parameters") or _legacy_rope(raw)
    if isinstance(rope, Mapping) and rope:
        return {"kind": "rope", **{str(k): v for k, v in rope.items()}}
    return None


def _legacy_rope(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    if "rope_theta" not in raw and "rope_scaling" not in raw:
        return None
    return {"rope_theta": raw.get("rope_theta"), "rope_scaling": raw.get("rope_scaling")}


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _dtype(raw: Mapping[str, Any]) -> str | None:
    value = raw.get("dtype", raw.get("torch_dtype"))
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 32:
        raise RejectedCheckpoint("config.dtype must be a dtype name", code=CONFIG_CODE)
    return value
