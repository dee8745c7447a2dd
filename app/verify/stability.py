"""Check "stability": the same inputs give the same logits every time.

The model is run exactly as the loader left it; this check never calls eval() or train(), because
its purpose is to catch a model that comes back with dropout active (or is otherwise
nondeterministic). from_pretrained returns models in eval mode, so besides the measured variance
the metrics say whether the model is in training mode and which dropout probabilities its config
sets: non-zero dropout in a config is normal, dropout in training mode is not.
"""

from __future__ import annotations

from typing import Any

import torch

from app.verify.base import CheckContext, CheckResult, not_applicable, verdict
from app.verify.forward import prompt_logits, subject_logits

NAME = "stability"
MIN_REPEATS = 2
_DROPOUT_CONFIG_KEYS = (
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "dropout",
    "attention_dropout",
    "hidden_dropout",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
)


def run(ctx: CheckContext) -> CheckResult:
    reason = ctx.subject.model_unavailable_reason
    if reason is not None:
        return not_applicable(NAME, f"The model cannot be built: {reason}")
    if not ctx.inputs:
        return not_applicable(NAME, "There are no prompts to run.")
    model = ctx.subject.model()
    repeats = max(MIN_REPEATS, ctx.options.repeats)
    max_variance, max_difference = _spread_over_repeats(ctx, model, repeats)
    training_mode = bool(getattr(model, "training", False))
    active_dropout = active_dropout_modules(model)
    metrics: dict[str, Any] = {
        "repeats": repeats,
        "prompts": len(ctx.inputs),
        "max_variance": max_variance,
        "max_abs_diff_between_runs": max_difference,
        "model_training_mode": training_mode,
        "dropout_probabilities": dropout_probabilities(model),
        "active_dropout_modules": active_dropout,
    }
    tolerance = ctx.tolerance(same_device=True)  # repeats on this device, against each other
    threshold = tolerance.max_variance
    ok = max_variance is not None and max_variance <= threshold and active_dropout == 0
    return verdict(
        NAME,
        ok,
        metrics=metrics,
        thresholds=tolerance.thresholds("max_variance") | {"active_dropout_modules": 0},
        detail=_detail(metrics, threshold, ok),
    )


def _spread_over_repeats(
    ctx: CheckContext, model: Any, repeats: int
) -> tuple[float | None, float | None]:
    """(max per-element variance, max |difference|) across repeats; None if not finite.

    One prompt at a time, so only `repeats` copies of one prompt's logits are held; the first
    repeat is the job's shared subject forward pass.
    """
    first_runs = subject_logits(ctx)
    max_variance = 0.0
    max_difference = 0.0
    for ids, first in zip(ctx.inputs, first_runs, strict=True):
        runs = [first] + [prompt_logits(model, [ids], ctx.device)[0] for _ in range(repeats - 1)]
        stacked = torch.stack(runs).double()
        variance = stacked.var(dim=0, correction=0).max()
        difference = (stacked.amax(dim=0) - stacked.amin(dim=0)).max()
        if not (torch.isfinite(variance) and torch.isfinite(difference)):
            return None, None
        max_variance = max(max_variance, float(variance))
        max_difference = max(max_difference, float(difference))
    return max_variance, max_difference


def dropout_probabilities(model: Any) -> dict[str, float]:
    """The non-null dropout probabilities the model's config declares."""
    config = getattr(model, "config", None)
    found: dict[str, float] = {}
    for key in _DROPOUT_CONFIG_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            found[key] = float(value)
    return found


def active_dropout_modules(model: Any) -> int:
    """Dropout layers with p > 0 that are in training mode, i.e. actually dropping activations."""
    if not isinstance(model, torch.nn.Module):
        return 0
    return sum(
        1
        for module in model.modules()
        if isinstance(module, torch.nn.modules.dropout._DropoutNd)
        and module.training
        and module.p > 0
    )


def _detail(metrics: dict[str, Any], threshold: float, ok: bool) -> str:
    repeats = metrics["repeats"]
    variance = metrics["max_variance"]
    mode = "training" if metrics["model_training_mode"] else "eval"
    if variance is None:
        return f"The logits of {repeats} runs contain NaN or infinite values."
    if variance <= threshold:
        outcome = (
            f"{repeats} runs of the same inputs gave identical logits within tolerance "
            f"(max variance {variance:.3g}, limit {threshold:.3g})"
        )
    else:
        outcome = (
            f"{repeats} runs of the same inputs gave different logits (max variance "
            f"{variance:.3g} > {threshold:.3g}, max difference "
            f"{metrics['max_abs_diff_between_runs']:.3g})"
        )
    if ok:
        return f"{outcome}; the model is in {mode} mode."
    if not metrics["active_dropout_modules"]:
        return f"{outcome}, although no dropout layer is active: the model is nondeterministic."
    nonzero = {key: p for key, p in metrics["dropout_probabilities"].items() if p > 0}
    listed = ", ".join(f"{key}={p:g}" for key, p in nonzero.items()) or "from its layers"
    return (
        f"{outcome}: the model is in {mode} mode with {metrics['active_dropout_modules']} "
        f"dropout layers active ({listed})."
    )
