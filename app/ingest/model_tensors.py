"""The tensors a causal-LM config implies, from transformers' own model built on the meta device.

Building on the meta device allocates no memory and runs no code from the upload (configs with
`auto_map` are refused before this), so any family transformers implements is validated the same
way: the stored tensor names and shapes must be exactly the ones the model would load.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from app.errors import RejectedCheckpoint

CONFIG_CODE = "config_invalid"
MISMATCH_CODE = "config_weights_mismatch"
_LISTED = 5
_MAX_CACHED_CONFIG = 256 << 10


@dataclass(frozen=True)
class ModelLayout:
    """What a config's model holds: `optional` names may be absent (tied aliases, names the
    loader tolerates missing); stored names matching `tolerated` patterns are not an error."""

    hf_config: Any
    class_name: str
    shapes: Mapping[str, tuple[int, ...]]
    optional: frozenset[str]
    tolerated: tuple[str, ...]
    base_prefix: str
    parameter_count: int
    # transformers' checkpoint-key conversions (renamings, and converters that merge tensors)
    renamings: tuple[Any, ...] = ()
    converters: tuple[Any, ...] = ()


def is_causal_lm(config: Mapping[str, Any]) -> bool:
    """Whether transformers builds this config as a causal LM: its model_type is in the
    AutoModelForCausalLM mapping and the config names a causal-LM class, or names none and
    the family is not an encoder that merely has a decoder head (BERT, RoBERTa...)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type, architectures = config.get("model_type"), config.get("architectures")
    if not isinstance(model_type, str) or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return False
    if isinstance(architectures, list) and architectures:
        causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
        return any(isinstance(name, str) and name in causal_classes for name in architectures)
    return model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def hf_config(config: Mapping[str, Any]) -> Any:
    """transformers' config object for `config` (a causal-LM model_type), or 422."""
    canonical = _canonical(config)
    if len(canonical) > _MAX_CACHED_CONFIG:
        return _cached_hf_config.__wrapped__(canonical)
    return _cached_hf_config(canonical)


def causal_lm_layout(config: Mapping[str, Any]) -> ModelLayout:
    """The meta-device model of `config`, cached by the config's canonical JSON."""
    canonical = _canonical(config)
    if len(canonical) > _MAX_CACHED_CONFIG:  # an odd, huge config is not kept in memory
        return _cached_layout.__wrapped__(canonical)
    return _cached_layout(canonical)


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(
        {k: v for k, v in config.items() if not k.startswith("_inferred")}, sort_keys=True
    )


@lru_cache(maxsize=64)
def _cached_hf_config(canonical: str) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = json.loads(canonical)
    try:
        return CONFIG_MAPPING[raw["model_type"]].from_dict(raw)
    except (
        Exception
    ) as exc:  # transformers raises many kinds for a bad config: all are the upload's
        raise RejectedCheckpoint(
            f"transformers refuses this {raw['model_type']} config: {_short(exc)}", code=CONFIG_CODE
        ) from exc


@lru_cache(maxsize=32)
def _cached_layout(canonical: str) -> ModelLayout:
    import torch
    from transformers import AutoModelForCausalLM

    config = _cached_hf_config(canonical)
    try:
        # dtype None: with the config's dtype, transformers would set torch's process-wide
        # default dtype while building, under the feet of other threads (generation).
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=None)  # type: ignore[no-untyped-call]
    except Exception as exc:  # a config transformers accepts but cannot build a model from
        raise RejectedCheckpoint(
            f"transformers cannot build a {config.model_type} model from this config: "
            f"{_short(exc)}",
            code=CONFIG_CODE,
        ) from exc
    return _layout_of(model, config)


def _layout_of(model: Any, config: Any) -> ModelLayout:
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming

    conversions = get_model_conversion_mapping(model)
    state = model.state_dict()
    unique = {name for name, _ in model.named_parameters()}
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - unique
    missing_ok = _patterns(model, "_keys_to_ignore_on_load_missing")
    optional = aliases | {n for n in state if any(re.search(p, n) for p in missing_ok)}
    return ModelLayout(
        hf_config=config,
        class_name=type(model).__name__,
        shapes={name: tuple(tensor.shape) for name, tensor in state.items()},
        optional=frozenset(optional),
        tolerated=_patterns(model, "_keys_to_ignore_on_load_unexpected"),
        base_prefix=str(getattr(model, "base_model_prefix", "") or ""),
        parameter_count=sum(p.numel() for p in model.parameters()),
        renamings=tuple(c for c in conversions if isinstance(c, WeightRenaming)),
        converters=tuple(c for c in conversions if isinstance(c, WeightConverter)),
    )


def _patterns(model: Any, attribute: str) -> tuple[str, ...]:
    return tuple(str(p) for p in getattr(model, attribute, None) or ())


def check_tensors_match(layout: ModelLayout, stored: Mapping[str, tuple[int, ...]]) -> None:
    """422 naming the missing, unexpected and mis-shaped tensors, if there are any."""
    expected = layout.shapes
    loaded_as = {name: _loaded_name(name, layout) for name in stored}
    targets = {target for target, _ in loaded_as.values()}
    missing = sorted(set(expected) - targets - layout.optional)
    unexpected = sorted(
        name
        for name, (target, _) in loaded_as.items()
        if target not in expected and not any(re.search(p, name) for p in layout.tolerated)
    )
    misshaped = sorted(
        f"{name} {list(stored[name])} (expected {list(expected[target])})"
        for name, (target, merged) in loaded_as.items()
        if target in expected and not merged and tuple(stored[name]) != expected[target]
    )
    if not (missing or unexpected or misshaped):
        return
    held = sum(_numel(shape) for shape in stored.values())
    problems = [
        f"{label} {_listed(names)}"
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        )
        if names
    ]
    raise RejectedCheckpoint(
        f"weights do not match the {layout.hf_config.model_type} config ({layout.class_name} "
        f"has {layout.parameter_count} parameters, the weights hold {held}): "
        + "; ".join(problems),
        code=MISMATCH_CODE,
    )


def _loaded_name(stored: str, layout: ModelLayout) -> tuple[str, bool]:
    """The model tensor a stored name loads into, as from_pretrained renames it (legacy names,
    a missing or extra base-model prefix), and whether a converter merges it with others (its
    shape is then not the model tensor's)."""
    from transformers.core_model_loading import rename_source_key

    renamings, converters = list(layout.renamings), list(layout.converters)
    prefix, shapes = layout.base_prefix, dict(layout.shapes)
    target, merged = rename_source_key(stored, renamings, converters, prefix, shapes)
    if target not in shapes and stored in shapes:
        target, merged = rename_source_key(stored, [], [], prefix, shapes)
    return target, merged is not None


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    more = len(names) - _LISTED
    return f"[{shown}{f', … {more} more' if more > 0 else ''}]"


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
