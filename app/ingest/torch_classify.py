"""What a loaded checkpoint is: a plain state_dict, or a training checkpoint holding one."""

from __future__ import annotations

from typing import Any, Literal

import torch

from app.ingest.torch_graph import contains_tensor
from app.ingest.torch_rejection import Rejection, short

CheckpointKind = Literal["state_dict", "training"]
MODEL_KEYS = ("model_state_dict", "state_dict", "model")


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
    holders = [short(key) for key, value in checkpoint.items() if contains_tensor(value)]
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
                f"{where}[{short(key)}] is a nested {type(value).__name__} of tensors; a "
                "state_dict must map names directly to tensors.",
            )
    return tensors


def _tensor_name(key: Any, where: str) -> str:
    if not isinstance(key, str):
        raise Rejection(
            "torch_no_state_dict",
            f"{where} has a tensor under the non-string key {short(key)}; tensor names must be "
            "strings.",
        )
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejection(
            "torch_no_state_dict", f"{where} has a tensor name that is not valid UTF-8."
        ) from None
    return key


def _kind_of(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return "a single tensor"
    return f"a {type(obj).__name__}"
