"""Model configs: validate what the user sent, or infer a GPT-2 config from tensor shapes.

Sizes are checked before anything is built from a config, so an absurd config costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from app.errors import RejectedCheckpoint

CONFIG_CODE = "config_invalid"

# (architecture field, names used by configs for it, upper bound)
_FIELDS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("n_layer", ("n_layer", "num_hidden_layers", "n_layers"), 1024),
    ("n_embd", ("n_embd", "hidden_size", "d_model"), 65_536),
    ("n_head", ("n_head", "num_attention_heads", "n_heads"), 1024),
    ("vocab_size", ("vocab_size",), 4_000_000),
    ("n_positions", ("n_positions", "max_position_embeddings", "n_ctx"), 4_194_304),
)
_MAX_GPT2_PARAMETERS = 1 << 40
_GPT2_HEAD_DIM = 64
_BLOCK = re.compile(r"^(?:transformer\.)?h\.(\d+)\.")


def architecture_from_config(config: Mapping[str, Any], *, inferred: bool) -> dict[str, Any]:
    """The architecture summary of a config, rejecting custom code and absurd sizes."""
    if not isinstance(config, Mapping):
        raise RejectedCheckpoint("config must be a JSON object", code=CONFIG_CODE)
    if "auto_map" in config:
        raise RejectedCheckpoint(
            "config.json has auto_map: models that need custom code are not accepted",
            code="config_custom_code",
        )
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise RejectedCheckpoint("config.model_type must be a string", code=CONFIG_CODE)
    architecture: dict[str, Any] = {"model_type": model_type, "inferred": inferred}
    for field, names, bound in _FIELDS:
        architecture[field] = _bounded_int(config, names, bound)
    _check_consistency(architecture)
    return architecture


def _bounded_int(config: Mapping[str, Any], names: tuple[str, ...], bound: int) -> int | None:
    for name in names:
        if name not in config or config[name] is None:
            continue
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= bound:
            raise RejectedCheckpoint(
                f"config.{name} = {value!r} is not a positive integer of at most {bound}",
                code=CONFIG_CODE,
            )
        return value
    return None


def _check_consistency(arch: dict[str, Any]) -> None:
    n_embd, n_head = arch["n_embd"], arch["n_head"]
    if n_embd and n_head and n_embd % n_head:
        raise RejectedCheckpoint(
            f"config: n_embd={n_embd} is not divisible by n_head={n_head}", code=CONFIG_CODE
        )
    if arch["model_type"] == "gpt2" and all(arch[k] for k in ("n_layer", "n_embd", "vocab_size")):
        estimate = arch["n_layer"] * 12 * n_embd**2 + arch["vocab_size"] * n_embd
        if estimate > _MAX_GPT2_PARAMETERS:
            raise RejectedCheckpoint(
                f"config describes a model of about {estimate:.3g} parameters, beyond any "
                "checkpoint this service accepts",
                code=CONFIG_CODE,
            )


def check_weights_match(
    architecture: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    """For GPT-2, the embedding shapes in the weights must agree with the config."""
    if architecture.get("model_type") != "gpt2":
        return
    wte = _find(shapes, "wte.weight")
    wpe = _find(shapes, "wpe.weight")
    expected = {
        "wte.weight": (architecture.get("vocab_size"), architecture.get("n_embd")),
        "wpe.weight": (architecture.get("n_positions"), architecture.get("n_embd")),
    }
    for name, shape in (("wte.weight", wte), ("wpe.weight", wpe)):
        want = expected[name]
        if shape is not None and not _shape_agrees(tuple(shape), want):
            raise RejectedCheckpoint(
                f"weights do not match config: {name} has shape {list(shape)}, config says "
                f"{list(want)}",
                code="config_weights_mismatch",
            )


def _shape_agrees(shape: tuple[int, ...], want: tuple[int | None, int | None]) -> bool:
    """Dimensions the config leaves unset (None) agree with anything."""
    if len(shape) != len(want):
        return False
    return all(w is None or w == got for got, w in zip(shape, want, strict=True))


def infer_gpt2_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any] | None:
    """A GPT-2 config derived from tensor names and shapes, or None if they are not GPT-2's.

    Head count is not visible in the shapes; GPT-2's convention of 64-wide heads is assumed
    (one head for models narrower than that) and the config says so in `_inferred_assumptions`.
    """
    wte, wpe = _find(shapes, "wte.weight"), _find(shapes, "wpe.weight")
    if wte is None or wpe is None or len(wte) != 2 or len(wpe) != 2 or wte[1] != wpe[1]:
        return None
    n_layer = len(_block_indices(shapes))
    if n_layer == 0:
        return None
    n_embd = wte[1]
    config: dict[str, Any] = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": wte[0],
        "n_positions": wpe[0],
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": max(1, n_embd // _GPT2_HEAD_DIM) if n_embd % _GPT2_HEAD_DIM == 0 else 1,
        "_inferred_assumptions": ["n_head from 64-wide heads"],
    }
    fc = _find(shapes, "h.0.mlp.c_fc.weight")
    if fc is not None and len(fc) == 2 and fc[1] != 4 * n_embd:
        config["n_inner"] = fc[1]
    return config


def _find(shapes: Mapping[str, tuple[int, ...]], suffix: str) -> tuple[int, ...] | None:
    for prefix in ("transformer.", ""):
        if prefix + suffix in shapes:
            return tuple(shapes[prefix + suffix])
    return None


def _block_indices(names: Iterable[str]) -> set[int]:
    return {int(m.group(1)) for name in names if (m := _BLOCK.match(name))}
