"""Loader child: the only code that reads an untrusted torch.save pickle.

Started by app.ingest.torch_pickle.run_child, under rlimits and a scrubbed environment, as

    python -P -s -m app.ingest.torch_child SRC OUT_DIR OPTIONS_JSON

It loads SRC with `torch.load(..., weights_only=True)` (never anything weaker), classifies what it
got, writes model.safetensors (plus optimizer.safetensors and training.json for a training
checkpoint) into OUT_DIR, and prints exactly one JSON line on the original stdout:
{"ok": true, "kind", "files", "tied"} or {"ok": false, "code", "message"}.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import torch
from safetensors.torch import save_file

from app.ingest.model_config import CHECKPOINT_CONFIG_KEYS
from app.ingest.torch_pickle import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINING_FILE,
    ChildOptions,
)

CheckpointKind = Literal["state_dict", "training"]
JsonScalar = bool | int | float | str | None

MODEL_KEYS = ("model_state_dict", "state_dict", "model")
OPTIMIZER_KEYS = ("optimizer_state_dict", "optimizer", "optim")
STEP_KEYS = ("global_step", "step", "iter_num")  # iter_num: nanoGPT
SAFETENSORS_METADATA = {"format": "pt"}

# Float state_dict entries that are well-known buffers, not parameters (see check_resumable).
KNOWN_FLOAT_BUFFERS = frozenset({"running_mean", "running_var", "inv_freq", "masked_bias"})
# param_group switches that choose an implementation rather than describe the optimisation.
IMPLEMENTATION_FLAGS = frozenset({"foreach", "capturable", "differentiable", "fused"})

_MAX_NESTING = 64
_MAX_REASONS = 20
_MAX_EXTRA_KEYS = 200
_MAX_STRING_CHARS = 1000
_MAX_LIST_ITEMS = 16
# Rough per-tensor size of a safetensors header entry besides its name.
_HEADER_BYTES_PER_TENSOR = 96
_MAX_CONFIG_ENTRIES = 200
_MAX_CONFIG_STRING_CHARS = 200


class Rejection(Exception):
    """A reason to refuse the upload; becomes RejectedCheckpoint(message, code) in the parent."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Optimizer:
    """A torch.optim state_dict whose structure has been checked."""

    state: dict[int, dict[str, Any]]
    param_groups: list[dict[str, Any]]


@dataclass
class Conversion:
    kind: CheckpointKind
    model: dict[str, torch.Tensor]
    tied: dict[str, str]
    optimizer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    training: dict[str, Any] | None = None


# --- entry point -----------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    result_stream = _claim_stdout()
    if len(argv) != 3:
        print("usage: python -m app.ingest.torch_child SRC OUT_DIR OPTIONS_JSON", file=sys.stderr)
        return 2
    _require_rlimits()
    torch.set_num_threads(1)
    src, out_dir, options = Path(argv[0]), Path(argv[1]), ChildOptions.from_json(argv[2])
    try:
        result = run(src, out_dir, options)
    except Rejection as rejection:
        result = {"ok": False, "code": rejection.code, "message": rejection.message}
    except MemoryError:
        result = {"ok": False, "code": "torch_resource_limit", "message": _out_of_memory_message()}
    result_stream.write(json.dumps(result) + "\n")
    result_stream.flush()
    return 0


def _claim_stdout() -> TextIO:
    """Keep the real stdout for the result line; anything else printing goes to stderr."""
    result_stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return result_stream


def _require_rlimits() -> None:
    """Refuse to touch untrusted bytes if started without the parent's limits."""
    for kind in (resource.RLIMIT_AS, resource.RLIMIT_CPU):
        if resource.getrlimit(kind)[0] == resource.RLIM_INFINITY:
            raise SystemExit("torch_child must be started by app.ingest.torch_pickle (no rlimits)")


def run(src: Path, out_dir: Path, options: ChildOptions) -> dict[str, Any]:
    checkpoint = load_weights_only(src)
    check_object_graph(checkpoint, options.max_pickled_objects)
    try:
        conversion = convert(checkpoint, options)
        files = write_outputs(conversion, out_dir)
    except (Rejection, MemoryError):
        raise
    except Exception as exc:  # a bug or an exotic object: still only this upload fails
        if _is_allocation_failure(exc):
            raise MemoryError from exc
        raise Rejection(
            "torch_load_failed", f"Could not convert the loaded checkpoint: {_describe(exc)}"
        ) from exc
    return {
        "ok": True,
        "kind": conversion.kind,
        "files": files,
        "tied": conversion.tied,
        "configs": carried_configs(checkpoint),
    }


def load_weights_only(src: Path) -> Any:
    """torch.load with weights_only=True; a file object avoids torch's by-extension dispatch."""
    try:
        with src.open("rb") as stream:
            return torch.load(stream, weights_only=True, map_location="cpu", mmap=False)
    except pickle.UnpicklingError as exc:
        raise Rejection(
            "torch_unsafe_pickle",
            f"torch.load(weights_only=True) refused this checkpoint: {weights_only_reason(exc)}. "
            "A checkpoint may contain only tensors, dicts, lists and numbers; re-save just the "
            "state_dict (and optimizer state) with torch.save.",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:
        if _is_allocation_failure(exc):
            raise MemoryError from exc
        raise Rejection(
            "torch_load_failed",
            f"torch could not load this checkpoint: {_describe(exc)}{_load_failure_hint(exc)}",
        ) from None


def weights_only_reason(exc: BaseException) -> str:
    """Pull the unpickler's own reason (e.g. the refused global) out of torch's long message."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    text = text.split("Check the documentation of torch.load")[0]
    marker = "WeightsUnpickler error:"
    if marker in text and text.split(marker, 1)[1].strip():
        reason = text.split(marker, 1)[1]
    else:
        paragraphs = [part.strip() for part in text.split("\n\n") if part.strip()]
        reason = paragraphs[-1] if paragraphs else text
    reason = reason.split(" Please use `torch.serialization")[0]
    return _truncate(" ".join(reason.split()).rstrip("."), 500)


def _is_allocation_failure(exc: BaseException) -> bool:
    """torch reports a failed allocation under RLIMIT_AS as RuntimeError, not MemoryError."""
    text = str(exc)
    return "can't allocate memory" in text or "Cannot allocate memory" in text


def _out_of_memory_message() -> str:
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    limit_text = "" if limit == resource.RLIM_INFINITY else f" of {limit} bytes (address space)"
    return f"Loading the checkpoint needs more memory than the loader's limit{limit_text}."


def _load_failure_hint(exc: BaseException) -> str:
    text = str(exc)
    if "resize storage" in text or "does not match expected size" in text:
        return " (a tensor claims more data than its stored bytes hold: the file is corrupt)"
    if "out of bounds for storage" in text:
        return " (a tensor reaches outside its storage: the file is corrupt)"
    return ""


# --- structure checks ------------------------------------------------------------------------


def check_object_graph(root: Any, max_objects: int) -> None:
    """Reject cyclic, too deeply nested, or memo-expansion ("billion laughs") object graphs.

    A pickle can reference one container many times through its memo, so a few hundred bytes can
    describe a structure with 2**200 paths. We count every container as often as it is reachable
    (memoised per object, so this is linear in distinct objects) and refuse past `max_objects`.
    """
    expanded_sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def expanded_size(obj: Any, depth: int) -> int:
        children = _children(obj)
        if children is None:
            return 1
        key = id(obj)
        if key in expanded_sizes:
            return expanded_sizes[key]
        if key in in_progress:
            raise Rejection("torch_no_state_dict", "The checkpoint's pickle contains a cycle.")
        if depth > _MAX_NESTING:
            raise Rejection(
                "torch_resource_limit",
                f"The checkpoint nests containers more than {_MAX_NESTING} levels deep.",
            )
        in_progress.add(key)
        total = 1
        for child in children:
            total += expanded_size(child, depth + 1)
            if total > max_objects:
                raise Rejection(
                    "torch_resource_limit",
                    f"The checkpoint's pickle expands to more than {max_objects} objects through "
                    "shared references (a memo-expansion bomb); refusing to process it.",
                )
        in_progress.discard(key)
        expanded_sizes[key] = total
        return total

    expanded_size(root, 0)


def _children(obj: Any) -> list[Any] | None:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, list | tuple | set | frozenset):
        return list(obj)
    return None


def contains_tensor(obj: Any) -> bool:
    seen: set[int] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, torch.Tensor):
            return True
        children = _children(node)
        if children is None or id(node) in seen:
            return False
        seen.add(id(node))
        return any(visit(child) for child in children)

    return visit(obj)


def classify(checkpoint: Any) -> tuple[CheckpointKind, dict[str, torch.Tensor], str | None]:
    """Return (kind, model tensors in file order, key holding the model state or None)."""
    if isinstance(checkpoint, dict):
        for key in MODEL_KEYS:
            value = checkpoint.get(key)
            if isinstance(value, dict) and _has_direct_tensor(value):
                return "training", flat_tensors(value, f"checkpoint[{key!r}]"), key
        if _has_direct_tensor(checkpoint):
            return "state_dict", flat_tensors(checkpoint, "the state_dict"), None
    if not contains_tensor(checkpoint):
        raise Rejection(
            "torch_no_tensors",
            f"The checkpoint ({_kind_of(checkpoint)}) contains no tensors, so there are no weights "
            "to store.",
        )
    raise Rejection("torch_no_state_dict", _no_state_dict_message(checkpoint))


def _has_direct_tensor(mapping: dict[Any, Any]) -> bool:
    return any(isinstance(value, torch.Tensor) for value in mapping.values())


def _no_state_dict_message(checkpoint: Any) -> str:
    expected = (
        "Expected a state_dict (a dict mapping parameter names to tensors) or a training "
        f"checkpoint dict holding one under {', '.join(repr(k) for k in MODEL_KEYS)}."
    )
    if not isinstance(checkpoint, dict):
        return f"The checkpoint is {_kind_of(checkpoint)}, not a state_dict. {expected}"
    holders = [_short(key) for key, value in checkpoint.items() if contains_tensor(value)]
    return (
        f"The checkpoint has tensors only inside nested containers ({', '.join(holders[:10])}) "
        f"and no recognised layout. {expected}"
    )


def flat_tensors(mapping: dict[Any, Any], where: str) -> dict[str, torch.Tensor]:
    """A state_dict's name -> tensor entries; non-tensor values (metadata) are ignored."""
    tensors: dict[str, torch.Tensor] = {}
    for key, value in mapping.items():
        if isinstance(value, torch.Tensor):
            tensors[_tensor_name(key, where)] = value
        elif contains_tensor(value):
            raise Rejection(
                "torch_no_state_dict",
                f"{where}[{_short(key)}] is a nested {type(value).__name__} of tensors; a "
                "state_dict must map names directly to tensors.",
            )
    return tensors


def _tensor_name(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise Rejection(
            "torch_no_state_dict",
            f"{where} has a tensor under the non-string key {_short(key)}; tensor names must be "
            "strings.",
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejection(
            "torch_no_state_dict", f"{where} has a tensor name that is not valid UTF-8."
        ) from None
    return key


# --- tensors ---------------------------------------------------------------------------------


def check_tensors(tensors: dict[str, torch.Tensor], what: str, options: ChildOptions) -> None:
    if len(tensors) > options.max_tensors:
        raise Rejection(
            "torch_resource_limit",
            f"The {what} has {len(tensors)} tensors, more than the limit of {options.max_tensors}.",
        )
    header_bytes = sum(len(name.encode()) + _HEADER_BYTES_PER_TENSOR for name in tensors)
    if header_bytes > options.max_header_bytes:
        raise Rejection("torch_resource_limit", f"The {what}'s tensor names are too long to index.")
    supported = _safetensors_dtypes()
    for name, tensor in tensors.items():
        problem = _unsupported(tensor, supported)
        if problem:
            raise Rejection(
                "torch_unsupported_tensor", f"Tensor {_short(name)} in the {what} {problem}."
            )


def _unsupported(tensor: torch.Tensor, supported: frozenset[torch.dtype]) -> str | None:
    if tensor.layout != torch.strided:
        return f"has layout {tensor.layout}; only dense tensors can be stored"
    if tensor.device.type != "cpu":
        return f"is on device {tensor.device.type} and has no data"
    if tensor.dtype not in supported:
        return f"has dtype {tensor.dtype}, which safetensors cannot store"
    return None


def _safetensors_dtypes() -> frozenset[torch.dtype]:
    import safetensors.torch as safetensors_torch

    return frozenset(getattr(safetensors_torch, "_TYPES", {}).values()) or frozenset(
        {torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32}
        | {torch.int16, torch.int8, torch.uint8, torch.bool}
    )


def _view_key(tensor: torch.Tensor) -> tuple[Any, ...]:
    storage = tensor.untyped_storage()
    return (
        storage.data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


def plan_storage_sharing(
    tensors: dict[str, torch.Tensor], *, drop_aliases: bool
) -> tuple[dict[str, bool], dict[str, str]]:
    """Decide, without allocating, which tensors to keep and which need their own copy.

    Like save_pretrained, an exact alias (same storage, offset, shape, stride and dtype) of an
    earlier tensor is dropped and recorded in the returned alias map; any other tensor on an
    already-used storage is marked for cloning so the written tensors never share memory.
    Returns ({name: needs_clone} for kept tensors in order, {dropped alias: kept name}).
    """
    first_view: dict[tuple[Any, ...], str] = {}
    used_storages: set[int] = set()
    keep: dict[str, bool] = {}
    aliases: dict[str, str] = {}
    for name, tensor in tensors.items():
        storage = tensor.untyped_storage()
        if storage.nbytes() == 0:  # empty storages all report data_ptr 0; never aliases
            keep[name] = False
            continue
        view = _view_key(tensor)
        if drop_aliases and view in first_view:
            aliases[name] = first_view[view]
            continue
        first_view.setdefault(view, name)
        keep[name] = storage.data_ptr() in used_storages
        used_storages.add(storage.data_ptr())
    return keep, aliases


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return math.prod(tensor.shape) * tensor.element_size()


def materialize(
    tensors: dict[str, torch.Tensor], needs_clone: dict[str, bool]
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, clone in needs_clone.items():
        tensor = tensors[name].detach()
        if clone:
            out[name] = tensor.clone(memory_format=torch.contiguous_format)
        else:
            out[name] = tensor.contiguous()
    return out


# --- optimizer and training summary ----------------------------------------------------------


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
    floating-point state_dict entry is a parameter except well-known float buffers
    (KNOWN_FLOAT_BUFFERS, e.g. BatchNorm's running_mean/var) and the tied-away aliases, which
    named_parameters also skips; and every non-scalar state tensor is element-wise, so it has its
    parameter's shape (true for all torch.optim optimizers; factored ones like Adafactor fail).
    """
    if optimizer is None:
        reason = (
            "the optimizer entry is not a torch.optim state_dict (needs 'state' and 'param_groups')"
            if optimizer_present
            else "the checkpoint has no optimizer state"
        )
        return {"ok": False, "reasons": [reason]}
    parameters = [
        (name, tuple(tensor.shape))
        for name, tensor in model.items()
        if (tensor.is_floating_point() or tensor.is_complex())
        and name.rsplit(".", 1)[-1] not in KNOWN_FLOAT_BUFFERS
    ]
    reasons = _coverage_problems(optimizer, parameters)
    if not reasons:
        reasons = _state_problems(optimizer, parameters)
    shown = reasons[:_MAX_REASONS]
    if len(reasons) > _MAX_REASONS:
        shown.append(f"... and {len(reasons) - _MAX_REASONS} more")
    return {"ok": not reasons, "reasons": shown}


def _coverage_problems(optimizer: Optimizer, parameters: list[tuple[str, Any]]) -> list[str]:
    indices = [index for group in optimizer.param_groups for index in group["params"]]
    if len(set(indices)) != len(indices):
        return ["the optimizer's param_groups list a parameter index more than once"]
    if sorted(indices) != list(range(len(parameters))):
        return [
            f"the optimizer's param_groups cover {len(indices)} parameters but the model has "
            f"{len(parameters)} floating-point parameters"
        ]
    strays = sorted(index for index in optimizer.state if not 0 <= index < len(parameters))
    if strays:
        return [f"the optimizer has state for parameter indices {strays[:10]} the model lacks"]
    return []


def _state_problems(optimizer: Optimizer, parameters: list[tuple[str, Any]]) -> list[str]:
    if not optimizer.state:
        if _stateless_sgd(optimizer):
            return []
        return ["the optimizer state is empty (the optimizer never took a step)"]
    problems: list[str] = []
    for index, (name, shape) in enumerate(parameters):
        entry = optimizer.state.get(index)
        if entry is None:
            problems.append(f"no optimizer state for parameter {index} ({name})")
            continue
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != shape:
                problems.append(
                    f"optimizer state.{index}.{key} has shape {list(value.shape)} but parameter "
                    f"{index} ({name}) has shape {list(shape)}"
                )
    return problems


def _stateless_sgd(optimizer: Optimizer) -> bool:
    return guess_optimizer_type(optimizer)[0] == "SGD" and all(
        not _number(group.get("momentum")) for group in optimizer.param_groups
    )


def find_optimizer(checkpoint: dict[Any, Any]) -> tuple[str | None, Optimizer | None]:
    """The first optimizer key present and its parsed state (None if it is not torch.optim's)."""
    key = next((key for key in OPTIMIZER_KEYS if key in checkpoint), None)
    return key, (parse_optimizer(checkpoint[key]) if key is not None else None)


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
        name = _truncate(name, 200)
        if _is_json_scalar_value(value) and len(extra) < _MAX_EXTRA_KEYS:
            extra[name] = _json_scalar(value)
        elif len(ignored) < _MAX_EXTRA_KEYS:
            ignored.append(name)
    return extra, ignored


# --- a config carried in the checkpoint ------------------------------------------------------


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


# --- conversion ------------------------------------------------------------------------------


def convert(checkpoint: Any, options: ChildOptions) -> Conversion:
    kind, model_tensors, model_key = classify(checkpoint)
    check_tensors(model_tensors, "model state_dict", options)
    keep_model, tied = plan_storage_sharing(model_tensors, drop_aliases=True)
    optimizer_key, optimizer = find_optimizer(checkpoint) if kind == "training" else (None, None)
    state_tensors = optimizer_tensors(optimizer) if optimizer else {}
    check_tensors(state_tensors, "optimizer state", options)
    keep_state, _ = plan_storage_sharing(state_tensors, drop_aliases=False)
    _check_output_budget(model_tensors, keep_model, state_tensors, keep_state, options)
    conversion = Conversion(kind=kind, model=materialize(model_tensors, keep_model), tied=tied)
    if model_key is not None:
        conversion.optimizer_tensors = materialize(state_tensors, keep_state)
        conversion.training = summarize_training(
            checkpoint, model_key, conversion.model, optimizer_key, optimizer, len(state_tensors)
        )
    return conversion


def _check_output_budget(
    model: dict[str, torch.Tensor],
    keep_model: dict[str, bool],
    optimizer: dict[str, torch.Tensor],
    keep_optimizer: dict[str, bool],
    options: ChildOptions,
) -> None:
    """Refuse before allocating: stride-0 / overlapping views can claim far more than they store."""
    total = sum(_tensor_bytes(model[name]) for name in keep_model)
    total += sum(_tensor_bytes(optimizer[name]) for name in keep_optimizer)
    if total > options.max_output_bytes:
        raise Rejection(
            "torch_resource_limit",
            f"The checkpoint's tensors add up to {total} bytes once written out, more than the "
            f"limit of {options.max_output_bytes} bytes for this upload (tensors that are "
            "expanded or overlapping views of a small storage would be copied out in full).",
        )


def write_outputs(conversion: Conversion, out_dir: Path) -> list[str]:
    save_file(conversion.model, str(out_dir / MODEL_FILE), metadata=SAFETENSORS_METADATA)
    files = [MODEL_FILE]
    if conversion.training is None:
        return files
    if conversion.training["optimizer"] is not None:
        save_file(
            conversion.optimizer_tensors,
            str(out_dir / OPTIMIZER_FILE),
            metadata=SAFETENSORS_METADATA,
        )
        files.append(OPTIMIZER_FILE)
    text = json.dumps(conversion.training, indent=2, allow_nan=False)
    (out_dir / TRAINING_FILE).write_text(text + "\n", encoding="utf-8")
    files.append(TRAINING_FILE)
    return files


# --- small helpers ---------------------------------------------------------------------------


def _kind_of(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return "a single tensor"
    return f"a {type(obj).__name__}"


def _short(value: Any) -> str:
    return _truncate(repr(value), 80)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    return _truncate(f"{type(exc).__name__}: {exc}", 600)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
