"""load: the model instantiates from the stored files and gives sane outputs."""

from __future__ import annotations

import torch

from app.ingest.layouts import added_parameter_count
from app.verify.base import CheckContext, CheckResult, not_applicable, verdict
from app.verify.forward import subject_logits

NAME = "load"


def run(ctx: CheckContext) -> CheckResult:
    reason = ctx.subject.model_unavailable_reason
    if reason:
        return not_applicable(NAME, reason)
    try:
        model = ctx.subject.model()
    except Exception as exc:  # the stored files do not make a model: that is this check's verdict
        return verdict(
            NAME,
            False,
            detail=f"the model does not load from the stored files: {type(exc).__name__}: {exc}",
        )
    logits = subject_logits(ctx)
    vocab = int(model.config.vocab_size)
    shapes_ok = all(
        tuple(out.shape) == (len(ids), vocab) for out, ids in zip(logits, ctx.inputs, strict=True)
    )
    finite = all(bool(torch.isfinite(out).all()) for out in logits)
    parameters = sum(p.numel() for p in model.parameters())
    # the checkpoint's own count; a from-scratch layout's mapping may have added zero biases
    recorded = ctx.subject.view.parameter_count + added_parameter_count(
        ctx.subject.view.architecture
    )
    problems = []
    if not shapes_ok:
        problems.append(f"logits are not [positions, {vocab}]")
    if not finite:
        problems.append("logits contain NaN or Inf")
    if parameters != recorded:
        problems.append(f"model has {parameters} parameters, {recorded} were recorded")
    return verdict(
        NAME,
        not problems,
        metrics={
            "model_class": type(model).__name__,
            "parameters": parameters,
            "recorded_parameters": recorded,
            "logits_shapes": [list(out.shape) for out in logits],
            "finite": finite,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "parameters_by_dtype": _parameters_by_dtype(model),
        },
        thresholds={"parameters": recorded},
        detail="; ".join(problems)
        or f"{type(model).__name__} loads; logits finite and shaped [positions, {vocab}]",
    )


def _parameters_by_dtype(model: torch.nn.Module) -> dict[str, int]:
    counts: dict[str, int] = {}
    for parameter in model.parameters():
        dtype = str(parameter.dtype).removeprefix("torch.")
        counts[dtype] = counts.get(dtype, 0) + parameter.numel()
    return counts
