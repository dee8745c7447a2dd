"""Model configs: validate what the user sent, or infer a GPT-2 config from tensor shapes.

Sizes are checked before anything is built from a config, so an absurd config costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from app.errors import RejectedCheckpoint
from app.ingest.architecture import (
    bounded_int,
    check_integers_bounded,
    check_model_size,
    neutral_summary,
    sizes,
)
from app.ingest.model_tensors import causal_lm_layout, check_tensors_match, hf_config, is_causal_lm

CONFIG_CODE = "config_invalid"
MISMATCH_CODE = "config_weights_mismatch"
ASSUMPTIONS_KEY = "_inferred_assumptions"

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


def architecture_from_config(config: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """The architecture summary of a config, rejecting custom code and absurd sizes.

    `source` records where the config came from: `upload`, `config.json`, `checkpoint:<key>` or
    `inferred`. `inferred` is true when a field was assumed rather than read (the config lists
    it under `_inferred_assumptions`, as infer_gpt2_config writes), and `assumptions` says which.
    """
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
    check_integers_bounded(config)
    assumptions = _assumptions(config)
    architecture: dict[str, Any] = {
        "model_type": model_type,
        "inferred": bool(assumptions),
        "config_source": source,
    }
    for field, names, bound in _FIELDS:
        architecture[field] = _bounded_int(config, names, bound)
    _check_consistency(architecture)
    architecture.update(_family_summary(config))
    if assumptions:
        architecture["assumptions"] = assumptions
    return architecture


def _family_summary(config: Mapping[str, Any]) -> dict[str, Any]:
    """Causal LMs are read through transformers' config (its defaults apply) and sized by the
    model it builds on the meta device; any other config is summarised from its JSON."""
    if not is_causal_lm(config):
        check_model_size(sizes(config.get))
        return neutral_summary(config, config.get)
    hf = hf_config(config)
    text = hf.get_text_config()  # multimodal configs keep the language model's sizes here

    def read(name: str) -> Any:
        return getattr(text, name, getattr(hf, name, None))

    check_model_size(sizes(read))
    layout = causal_lm_layout(config)
    summary = neutral_summary(config, read, frozenset(layout.shapes))
    summary["model_class"] = layout.class_name
    summary["implied_parameter_count"] = layout.parameter_count
    return summary


def check_config_tensors(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """A causal LM's stored tensors must be exactly those its config's model loads."""
    if is_causal_lm(config):
        check_tensors_match(causal_lm_layout(config), shapes)


def _assumptions(config: Mapping[str, Any]) -> list[str]:
    listed = config.get(ASSUMPTIONS_KEY)
    if listed is None:
        return []
    if not isinstance(listed, list) or not all(
        isinstance(item, str) and len(item) <= 200 for item in listed[:16]
    ):
        raise RejectedCheckpoint(
            f"config.{ASSUMPTIONS_KEY} must be a list of short strings", code=CONFIG_CODE
        )
    return list(listed[:16])


def _bounded_int(
    config: Mapping[str, Any], names: tuple[str, ...], bound: int, where: str = "config"
) -> int | None:
    return bounded_int(config.get, names, bound, where)


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
                code=MISMATCH_CODE,
            )
    blocks = len(_block_indices(shapes))
    n_layer = architecture.get("n_layer")
    if blocks and n_layer is not None and n_layer != blocks:
        raise RejectedCheckpoint(
            f"weights do not match config: n_layer is {n_layer} but the weights hold {blocks} "
            "transformer blocks",
            code=MISMATCH_CODE,
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
    n_head = max(1, n_embd // _GPT2_HEAD_DIM) if n_embd % _GPT2_HEAD_DIM == 0 else 1
    config: dict[str, Any] = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": wte[0],
        "n_positions": wpe[0],
        "n_embd": n_embd,
        "n_layer": n_layer,
        "n_head": n_head,
        ASSUMPTIONS_KEY: [f"n_head {n_head} assumed from tensor shapes (heads 64 wide)"],
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


# --- configs carried inside a torch.save checkpoint --------------------------------------------

# Where training code keeps the model's config, most specific first: nanoGPT writes the model's
# own arguments to `model_args` and its whole training config (which repeats them) to `config`.
CHECKPOINT_CONFIG_KEYS = ("model_args", "config", "cfg", "hparams", "hyper_parameters", "args")
_NANOGPT_NAMES = {"n_positions": ("block_size",)}
_GPT2_DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")
_ARCHITECTURE_NAMES = frozenset(
    name for field, names, _ in _FIELDS if field != "vocab_size" for name in names
) | {"block_size"}


def config_from_checkpoint(
    candidates: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
) -> tuple[str, dict[str, Any]] | None:
    """(source, config) for the first candidate that describes the model, else None.

    A config with `model_type` is taken as a Hugging Face config; one in nanoGPT's names
    (n_layer, n_head, n_embd, block_size, bias, vocab_size, dropout) is mapped onto the GPT-2
    config inferred from the weights, and must agree with them. Values are untrusted: every one
    used is type- and range-checked, and a contradiction with the weights is refused (422).
    """
    for key in CHECKPOINT_CONFIG_KEYS:
        raw = candidates.get(key)
        if not isinstance(raw, Mapping) or not _ARCHITECTURE_NAMES & set(raw):
            continue
        where = f"the checkpoint's {key}"
        if isinstance(raw.get("model_type"), str):
            return f"checkpoint:{key}", dict(raw)
        mapped = _gpt2_from_checkpoint(raw, shapes, where)
        if mapped is not None:
            return f"checkpoint:{key}", mapped
    return None


def _gpt2_from_checkpoint(
    raw: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], where: str
) -> dict[str, Any] | None:
    """nanoGPT-style names onto the config the weights imply; None if they are not GPT-2's."""
    config = infer_gpt2_config(shapes)
    if config is None:
        return None
    for field, names, bound in _FIELDS:
        value = _bounded_int(raw, names + _NANOGPT_NAMES.get(field, ()), bound, where)
        if value is None:
            continue
        if field == "n_head":
            config["n_head"] = value
            config.pop(ASSUMPTIONS_KEY)
        elif value != config[field]:
            raise RejectedCheckpoint(
                f"{where} says {field} = {value}, but the weights have {field} {config[field]}",
                code=MISMATCH_CODE,
            )
    _map_dropout(raw, config, where)
    _check_bias(raw, shapes, where)
    return config


def _map_dropout(raw: Mapping[str, Any], config: dict[str, Any], where: str) -> None:
    dropout = raw.get("dropout")
    if dropout is None:
        return
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout <= 1:
        raise RejectedCheckpoint(
            f"{where}.dropout = {dropout!r} is not a probability between 0 and 1",
            code=CONFIG_CODE,
        )
    config.update(dict.fromkeys(_GPT2_DROPOUTS, float(dropout)))


def _check_bias(raw: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    bias = raw.get("bias")
    if bias is None:
        return
    if not isinstance(bias, bool):
        raise RejectedCheckpoint(f"{where}.bias = {bias!r} is not true or false", code=CONFIG_CODE)
    has_bias = _find(shapes, "h.0.attn.c_attn.bias") is not None
    if bias != has_bias:
        held = "hold" if has_bias else "have no"
        raise RejectedCheckpoint(
            f"{where} says bias = {bias}, but the weights {held} bias tensors",
            code=MISMATCH_CODE,
        )


def check_configs_agree(
    chosen: Mapping[str, Any], carried: Mapping[str, Any], carried_source: str
) -> None:
    """The config sent with an upload may not contradict the one the checkpoint carries."""
    for field, _, _ in _FIELDS:
        mine, theirs = chosen.get(field), carried.get(field)
        if mine is not None and theirs is not None and mine != theirs:
            raise RejectedCheckpoint(
                f"the uploaded config says {field} = {mine}, but the checkpoint's "
                f"{carried_source.removeprefix('checkpoint:')} says {theirs}: send a config "
                "that agrees with it, or none",
                code="config_conflict",
            )
