"""What a training checkpoint says besides its weights, in JSON-safe form.

The optimizer's state (its type, hyper-parameters and whether it can resume training), the
progress counters and other scalars, and any config dict carried in the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from app.ingest.model_config import CHECKPOINT_CONFIG_KEYS
from app.ingest.optimizer_state import (
    IMPLEMENTATION_FLAGS,
    Shape,
    coverage_problems,
    shape_problems,
    trainable_parameters,
)
from app.ingest.torch_rejection import truncate

JsonScalar = bool | int | float | str | None
OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer", "optim")
STEP_KEYS = ("global_step", "step", "iter_num")  # iter_num: nanoGPT
_MAX_REASONS = 20
_MAX_EXTRA_KEYS = 200
_MAX_STRING_CHARS = 1000
_MAX_LIST_ITEMS = 16
_MAX_CONFIG_ENTRIES = 200
_MAX_CONFIG_STRING_CHARS = 200


@dataclass
class Optimizer:
    """A torch.optim state_dict whose structure has been checked."""

    state: dict[int, dict[str, Any]]
    param_groups: list[dict[str, Any]]


def parse_optimizer(value: Any) -> Optimizer | None:
    """Return the optimizer state if `value` has torch.optim's state_dict layout, else None."""
    if not isinstance(value, dict):
        return None
    state, groups = value.get("state"), value.get("param_groups")
    if not isinstance(state, dict) or not isinstance(groups, list):
        return None
    for index, entry in state.items():
        if not _is_index(index) or not isinstance(entry, dict):
            return None
        if not all(isinstance(key, str) for key in entry):
            return None
    for group in groups:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            return None
        if not all(_is_index(index) for index in group["params"]):
            return None
        if not all(isinstance(key, str) for key in group):
            return None
    return Optimizer(state=state, param_groups=groups)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def optimizer_tensors(optimizer: Optimizer) -> dict[str, torch.Tensor]:
    return {
        f"state.{index}.{key}": value
        for index, entry in optimizer.state.items()
        for key, value in entry.items()
        if isinstance(value, torch.Tensor)
    }


def find_optimizer(checkpoint: dict[Any, Any]) -> tuple[str | None, Optimizer | None]:
    """The first optimizer key present and its parsed state (None if it is not torch.optim's)."""
    key = next((key for key in OPTIMIZER_KEYS if key in checkpoint), None)
    return key, (parse_optimizer(checkpoint[key]) if key is not None else None)


def guess_optimizer_type(optimizer: Optimizer) -> tuple[str, str]:
    """Name the torch.optim class that produced this state, with the evidence used.

    torch >= 2.6 writes `decoupled_weight_decay` into Adam (False) and AdamW (True) groups; both
    also carry `amsgrad`, which RAdam/NAdam (that have `decoupled_weight_decay` too) do not. Older
    Adam/AdamW groups are identical, so there we fall back to AdamW's non-zero default decay.
    """
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    state_keys = {key for entry in optimizer.state.values() for key in entry}
    if "amsgrad" in group and "betas" in group:
        decoupled = group.get("decoupled_weight_decay")
        if isinstance(decoupled, bool):
            return ("AdamW" if decoupled else "Adam"), "param_group decoupled_weight_decay"
        decay = _number(group.get("weight_decay"))
        return ("AdamW" if decay else "Adam"), "guessed from weight_decay (no decoupled flag)"
    if "nesterov" in group or "momentum_buffer" in state_keys:
        return "SGD", "param_group nesterov / momentum_buffer state"
    if "centered" in group or ("square_avg" in state_keys and "acc_delta" not in state_keys):
        return "RMSprop", "param_group centered / square_avg state"
    if "lr_decay" in group or "sum" in state_keys:
        return "Adagrad", "param_group lr_decay / sum state"
    return "unknown", "no known optimizer's keys"


def summarize_optimizer(optimizer: Optimizer, state_tensor_count: int) -> dict[str, Any]:
    kind, evidence = guess_optimizer_type(optimizer)
    groups = [_json_group(group) for group in optimizer.param_groups]
    hyperparameters = {
        key: value
        for key, value in (groups[0] if groups else {}).items()
        if key != "params" and key not in IMPLEMENTATION_FLAGS
    }
    state_scalars: dict[str, dict[str, JsonScalar]] = {}
    for index, entry in optimizer.state.items():
        scalars = {
            key: value
            for key, value in entry.items()
            if not isinstance(value, torch.Tensor) and _is_json_scalar_value(value)
        }
        if scalars:
            state_scalars[str(index)] = {k: _json_scalar(v) for k, v in scalars.items()}
    return {
        "type": kind,
        "type_evidence": evidence,
        "param_groups": groups,
        "hyperparameters": hyperparameters,
        "state_tensors": state_tensor_count,
        "state_scalars": state_scalars,
    }


def _json_group(group: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in group.items():
        if key == "params":
            out[key] = list(value)
        elif _is_json_scalar_value(value):
            out[key] = _json_scalar(value)
        elif (
            isinstance(value, list | tuple)
            and len(value) <= _MAX_LIST_ITEMS
            and all(_is_json_scalar_value(item) for item in value)
        ):
            out[key] = [_json_scalar(item) for item in value]
    return out


def _is_json_scalar_value(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return (
            value.layout == torch.strided
            and value.device.type == "cpu"
            and value.numel() == 1
            and not value.is_complex()
        )
    if isinstance(value, str):
        return len(value) <= _MAX_STRING_CHARS
    return value is None or isinstance(value, bool | int | float)


def _json_scalar(value: Any) -> JsonScalar:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN / Infinity
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return None


def _number(value: Any) -> int | float | None:
    if not _is_json_scalar_value(value):
        return None
    scalar = _json_scalar(value)
    if isinstance(scalar, bool) or not isinstance(scalar, int | float):
        return None
    return scalar


def check_resumable(
    model: dict[str, torch.Tensor], optimizer: Optimizer | None, optimizer_present: bool
) -> dict[str, Any]:
    """Can training resume: does the optimizer state cover every trainable parameter?

    Without the module we cannot tell parameters from buffers, so this assumes: the optimizer was
    built from `model.parameters()` (its indices are positions in named_parameters order); every
    floating-point state_dict entry is a parameter except well-known float buffers (see
    trainable_parameters) and the tied-away aliases, which named_parameters also skips; and every
    non-scalar state tensor is element-wise, so it has its parameter's shape (true for all
    torch.optim optimizers; factored ones like Adafactor fail).
    """
    if optimizer is None:
        reason = (
            "the optimizer entry is not a torch.optim state_dict (needs 'state' and 'param_groups')"
            if optimizer_present
            else "the checkpoint has no optimizer state"
        )
        return {"ok": False, "reasons": [reason]}
    parameters = trainable_parameters(model)
    reasons = coverage_problems(
        optimizer.param_groups, optimizer.state, len(parameters), unit=" floating-point parameters"
    )
    if not reasons:
        reasons = _state_problems(optimizer, parameters)
    shown = reasons[:_MAX_REASONS]
    if len(reasons) > _MAX_REASONS:
        shown.append(f"... and {len(reasons) - _MAX_REASONS} more")
    return {"ok": not reasons, "reasons": shown}


def _state_problems(optimizer: Optimizer, parameters: list[tuple[str, Shape]]) -> list[str]:
    if not optimizer.state:
        if _stateless_sgd(optimizer):
            return []
        return ["the optimizer state is empty (the optimizer never took a step)"]
    return shape_problems(optimizer.state, parameters)


def _stateless_sgd(optimizer: Optimizer) -> bool:
    return guess_optimizer_type(optimizer)[0] == "SGD" and all(
        not _number(group.get("momentum")) for group in optimizer.param_groups
    )


def summarize_training(
    checkpoint: dict[Any, Any],
    model_key: str,
    model: dict[str, torch.Tensor],
    optimizer_key: str | None,
    optimizer: Optimizer | None,
    optimizer_state_tensors: int,
) -> dict[str, Any]:
    consumed: set[Any] = {model_key, optimizer_key}

    def take_number(keys: tuple[str, ...]) -> int | float | None:
        for key in keys:
            value = _number(checkpoint.get(key))
            if value is not None:
                consumed.add(key)
                return value
        return None

    summary: dict[str, Any] = {
        "epoch": take_number(("epoch",)),
        "step": take_number(STEP_KEYS),
        "loss": take_number(("loss",)),
        "val_loss": take_number(("val_loss",)),
        "model_key": model_key,
        "optimizer_key": optimizer_key,
    }
    summary["extra"], summary["ignored_keys"] = _extra_scalars(checkpoint, consumed)
    summary["optimizer"] = (
        summarize_optimizer(optimizer, optimizer_state_tensors) if optimizer else None
    )
    summary["resumable"] = check_resumable(model, optimizer, optimizer_key is not None)
    return summary


def _extra_scalars(
    checkpoint: dict[Any, Any], consumed: set[Any]
) -> tuple[dict[str, JsonScalar], list[str]]:
    extra: dict[str, JsonScalar] = {}
    ignored: list[str] = []
    for key, value in checkpoint.items():
        if key in consumed:
            continue
        name = key if isinstance(key, str) else repr(key)
        name = truncate(name, 200)
        if _is_json_scalar_value(value) and len(extra) < _MAX_EXTRA_KEYS:
            extra[name] = _json_scalar(value)
        elif len(ignored) < _MAX_EXTRA_KEYS:
            ignored.append(name)
    return extra, ignored


def carried_configs(checkpoint: Any) -> dict[str, dict[str, Any]]:
    """The JSON-safe part of each dict under a config key (model_args, config, ...).

    Only scalars, short lists of scalars and one level of nested dicts of those are kept, and
    few of them: the parent decides which (if any) describes the model and validates it.
    """
    if not isinstance(checkpoint, dict):
        return {}
    configs: dict[str, dict[str, Any]] = {}
    for key in CHECKPOINT_CONFIG_KEYS:
        value = checkpoint.get(key)
        if isinstance(value, dict):
            configs[key] = _json_mapping(value, nested=True)
    return configs


def _json_mapping(mapping: dict[Any, Any], *, nested: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if len(out) == _MAX_CONFIG_ENTRIES:
            break
        if not isinstance(key, str) or len(key) > _MAX_CONFIG_STRING_CHARS:
            continue
        if isinstance(value, dict) and nested:
            out[key] = _json_mapping(value, nested=False)
        elif _config_scalar(value):
            out[key] = _json_scalar(value)
        elif _config_list(value):
            out[key] = [_json_scalar(item) for item in value]
    return out


def _config_list(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) <= _MAX_LIST_ITEMS
        and all(_config_scalar(item) for item in value)
    )


def _config_scalar(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= _MAX_CONFIG_STRING_CHARS
    return _is_json_scalar_value(value)
