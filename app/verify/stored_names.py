"""A loaded model's tensors under the names its stored files use.

transformers 5 renames some weights on load and back on save (gpt_neox's stored `embed_out` is
the model's `lm_head`); comparing a reloaded model with what was stored needs the stored names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch

T = TypeVar("T", bound=torch.Tensor)


def as_stored(model: Any, tensors: Mapping[str, T]) -> dict[str, T]:
    """`tensors`, keyed by the model's own names, renamed as save_pretrained would write them."""
    from transformers.core_model_loading import revert_weight_conversion

    renamed: dict[str, T] = revert_weight_conversion(model, dict(tensors))
    return renamed


def stored_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    """The model's parameters by stored name (a tied one under each of its names)."""
    return as_stored(model, dict(model.named_parameters(remove_duplicate=False)))
