"""Where a model whose parameters have several float dtypes can run.

A mixed checkpoint (bfloat16 matrices, float32 norms) keeps each tensor's stored dtype when it is
loaded, but a plain forward on it fails on the dtype mismatch: it runs under autocast to the
least precise of its dtypes, as mixed-precision training ran it. Verification and generation
both run models through this, so a mixed model gives the same numbers in both.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

_NARROW_FIRST = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_context(model: Any) -> contextlib.AbstractContextManager[Any]:
    """Autocast to the narrowest float dtype for a mixed model; nothing for any other."""
    return autocast_to(autocast_dtype(model), next(model.parameters()).device)


def autocast_dtype(model: Any) -> torch.dtype | None:
    """The dtype a mixed model runs under autocast to, None for a model of one float dtype."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) < 2:
        return None
    return next(dtype for dtype in _NARROW_FIRST if dtype in dtypes)


def autocast_to(
    dtype: torch.dtype | None, device: torch.device
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
