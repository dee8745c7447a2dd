"""Does an optimizer's state fit a model? The checks ingestion and verification share.

Used by the sandboxed loader child (app.ingest.torch_child, on the pickled state it loaded) and by
the resumability check (app.verify.resumability, on the state rebuilt from what ingestion stored),
so it imports nothing but torch.

Parameter indices are positions in the model's parameter list (torch.optim numbers
`model.parameters()`); `parameters` below is that list as (name, shape) pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

Shape = tuple[int, ...]
OptimizerState = Mapping[int, Mapping[str, Any]]
ParamGroups = Sequence[Mapping[str, Any]]

# Float state_dict entries that are well-known buffers, not parameters (see trainable_parameters).
KNOWN_FLOAT_BUFFERS = frozenset({"running_mean", "running_var", "inv_freq", "masked_bias"})
# param_group switches that choose an implementation rather than describe the optimisation.
IMPLEMENTATION_FLAGS = frozenset({"foreach", "capturable", "differentiable", "fused"})


def trainable_parameters(state_dict: Mapping[str, torch.Tensor]) -> list[tuple[str, Shape]]:
    """The state_dict entries taken to be parameters when the module is not at hand.

    Every floating-point (or complex) entry is a parameter except well-known float buffers
    (KNOWN_FLOAT_BUFFERS, e.g. BatchNorm's running_mean/var).
    """
    return [
        (name, tuple(tensor.shape))
        for name, tensor in state_dict.items()
        if (tensor.is_floating_point() or tensor.is_complex())
        and name.rsplit(".", 1)[-1] not in KNOWN_FLOAT_BUFFERS
    ]


def coverage_problems(
    param_groups: ParamGroups, state: OptimizerState, parameter_count: int, *, unit: str = ""
) -> list[str]:
    """The param_groups must list every parameter index exactly once; no state may be stray.

    `unit` follows the model's parameter count in the message (e.g. " floating-point parameters").
    """
    indices = [index for group in param_groups for index in group["params"]]
    if len(set(indices)) != len(indices):
        return ["the optimizer's param_groups list a parameter index more than once"]
    if sorted(indices) != list(range(parameter_count)):
        return [
            f"the optimizer's param_groups cover {len(indices)} parameters but the model has "
            f"{parameter_count}{unit}"
        ]
    strays = sorted(index for index in state if not 0 <= index < parameter_count)
    if strays:
        return [f"the optimizer has state for parameter indices {strays[:10]} the model lacks"]
    return []


def is_elementwise(value: Any) -> bool:
    """Non-scalar state tensors (exp_avg, momentum_buffer, ...) have their parameter's shape.

    True for every torch.optim optimizer; factored ones (Adafactor) fail the shape checks.
    """
    return isinstance(value, torch.Tensor) and value.dim() > 0


def shape_problems(state: OptimizerState, parameters: Sequence[tuple[str, Shape]]) -> list[str]:
    """Every parameter has state, and each element-wise state tensor has its parameter's shape."""
    problems: list[str] = []
    for index, (name, shape) in enumerate(parameters):
        entry = state.get(index)
        if entry is None:
            problems.append(f"no optimizer state for parameter {index} ({name})")
            continue
        for key, value in entry.items():
            if is_elementwise(value) and tuple(value.shape) != shape:
                problems.append(
                    f"optimizer state.{index}.{key} has shape {list(value.shape)} but parameter "
                    f"{index} ({name}) has shape {list(shape)}"
                )
    return problems
