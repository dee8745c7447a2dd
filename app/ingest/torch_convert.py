"""From the loaded checkpoint to the files written: tensor checks, storage sharing, output."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from app.ingest.torch_classify import CheckpointKind, classify
from app.ingest.torch_pickle import MODEL_FILE, OPTIMIZER_FILE, TRAINING_FILE, ChildOptions
from app.ingest.torch_rejection import Rejection, short
from app.ingest.torch_training import find_optimizer, optimizer_tensors, summarize_training

SAFETENSORS_METADATA = {"format": "pt"}
# Rough per-tensor size of a safetensors header entry besides its name.
_HEADER_BYTES_PER_TENSOR = 96


@dataclass
class Conversion:
    kind: CheckpointKind
    model: dict[str, torch.Tensor]
    tied: dict[str, str]
    optimizer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    training: dict[str, Any] | None = None


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
                "torch_unsupported_tensor", f"Tensor {short(name)} in the {what} {problem}."
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
