"""Check "equivalence": the subject produces the reference's logits and greedy continuations.

The reference is another stored checkpoint (`ctx.reference`, run here on the same device) or a
reference outputs document recorded where the model was trained (`ctx.reference_outputs`). When
both are given the checkpoint is used. Per prompt we compare the logits (max and mean |Δ|,
KL(reference ‖ subject) of the softmax averaged over positions, top-1 agreement) and the greedy
continuations token by token; the aggregated metrics are the worst case over prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.errors import InvalidInput
from app.verify import near_ties
from app.verify.architectures import (
    architecture_differences,
    architecture_fields,
    checkpoint_architecture,
)
from app.verify.base import CheckContext, CheckResult, Tolerance, not_applicable, verdict
from app.verify.forward import (
    cached,
    greedy_continuation,
    prompt_logits,
    reference_greedy,
    reference_logits,
    subject_greedy,
    subject_logits,
)
from app.verify.reference_outputs import ReferenceOutputs, parse_reference_outputs

NAME = "equivalence"
_PARSED_DOCUMENT_KEY = "reference_outputs:parsed"


@dataclass(frozen=True)
class _Outputs:
    logits: list[torch.Tensor]
    greedy: list[list[int]]


@dataclass(frozen=True)
class _Reference:
    kind: str  # "checkpoint" or "outputs document"
    inputs: list[list[int]]
    max_new_tokens: int
    outputs: _Outputs
    texts: list[str | None]


def run(ctx: CheckContext) -> CheckResult:
    return _with_architectures(ctx, _run(ctx))


def _run(ctx: CheckContext) -> CheckResult:
    reason = ctx.subject.model_unavailable_reason
    if reason is not None:
        return not_applicable(NAME, f"The model cannot be built: {reason}")
    if ctx.reference is None and ctx.reference_outputs is None:
        return not_applicable(NAME, "no reference given")
    if ctx.reference is not None and ctx.reference.model_unavailable_reason is not None:
        return not_applicable(
            NAME, f"The reference model cannot be built: {ctx.reference.model_unavailable_reason}"
        )
    try:
        reference = _reference(ctx)
    except InvalidInput as exc:
        return CheckResult(NAME, "error", detail=exc.message)
    problem = _input_problem(ctx.subject.model(), reference)
    if problem is not None:
        return verdict(NAME, False, detail=problem, metrics={"reference": reference.kind})
    subject = _subject_outputs(ctx, reference)
    return _compare(ctx, reference, subject)


def reference_outputs_of(ctx: CheckContext) -> ReferenceOutputs:
    """The parsed ctx.reference_outputs, parsed once per job (raises InvalidInput)."""
    return cached(ctx, _PARSED_DOCUMENT_KEY, lambda: parse_reference_outputs(ctx.reference_outputs))


# --- architectures -------------------------------------------------------------------------


def _with_architectures(ctx: CheckContext, result: CheckResult) -> CheckResult:
    """Compare what both sides say they are first; any difference leads the verdict's message."""
    if result.status in ("not_applicable", "error"):
        return result
    subject = checkpoint_architecture(ctx.subject)
    reference = _reference_architecture(ctx)
    differences = architecture_differences(subject, reference)
    result.metrics["architectures"] = {"subject": subject, "reference": reference}
    result.metrics["architecture_differences"] = differences
    if differences:
        result.detail = f"The architectures differ ({', '.join(differences)}). {result.detail}"
    return result


def _reference_architecture(ctx: CheckContext) -> dict[str, Any] | None:
    if ctx.reference is not None:
        return checkpoint_architecture(ctx.reference)
    recorded = (ctx.reference_outputs or {}).get("architecture")
    return architecture_fields(recorded) if isinstance(recorded, dict) else None


# --- gathering outputs -----------------------------------------------------------------------


def _reference(ctx: CheckContext) -> _Reference:
    if ctx.reference is not None:
        return _Reference(
            kind="checkpoint",
            inputs=ctx.inputs,
            max_new_tokens=ctx.options.max_new_tokens,
            outputs=_Outputs(reference_logits(ctx), reference_greedy(ctx)),
            texts=[None] * len(ctx.inputs),
        )
    document = reference_outputs_of(ctx)
    return _Reference(
        kind="outputs document",
        inputs=document.inputs,
        max_new_tokens=document.max_new_tokens,
        outputs=_Outputs(
            [prompt.logits for prompt in document.prompts],
            [prompt.greedy for prompt in document.prompts],
        ),
        texts=[prompt.text for prompt in document.prompts],
    )


def _subject_outputs(ctx: CheckContext, reference: _Reference) -> _Outputs:
    """Use the shared cached passes when they are over the same inputs and length (the usual
    case: the runner sets ctx.inputs and max_new_tokens from the document)."""
    if reference.inputs == ctx.inputs and reference.max_new_tokens == ctx.options.max_new_tokens:
        return _Outputs(subject_logits(ctx), subject_greedy(ctx))
    model = ctx.subject.model()
    steps = reference.max_new_tokens
    logits = cached(
        ctx,
        "logits:subject:reference-inputs",
        lambda: prompt_logits(model, reference.inputs, ctx.device),
    )
    greedy = cached(
        ctx,
        f"greedy:subject:reference-inputs:{steps}",
        lambda: [greedy_continuation(model, ids, steps, ctx.device) for ids in reference.inputs],
    )
    return _Outputs(logits, greedy)


def _input_problem(model: Any, reference: _Reference) -> str | None:
    if not reference.inputs:
        return "There are no prompts to compare on."
    vocab_size = _vocab_size(model)
    for index, ids in enumerate(reference.inputs):
        if not ids:
            return f"Prompt {index} has no tokens."
        if vocab_size is not None and max(ids) >= vocab_size:
            return (
                f"Prompt {index} uses token id {max(ids)}, but the subject's vocabulary has only "
                f"{vocab_size} tokens, so it cannot be the reference's model."
            )
    return None


def _vocab_size(model: Any) -> int | None:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) else None


# --- comparing -------------------------------------------------------------------------------


def _compare(ctx: CheckContext, reference: _Reference, subject: _Outputs) -> CheckResult:
    tolerance = ctx.tolerance()
    thresholds = tolerance.thresholds("max_abs_logit", "min_top1_agreement", "max_kl")
    thresholds["greedy_match"] = True
    shape_problem = _shape_problem(subject.logits, reference.outputs.logits)
    if shape_problem is not None:
        metrics = {"reference": reference.kind, "prompts": len(reference.inputs)}
        return verdict(NAME, False, metrics=metrics, thresholds=thresholds, detail=shape_problem)
    tokenizer = ctx.subject.tokenizer()
    per_prompt = [
        _compare_prompt(index, reference, subject, tokenizer)
        for index in range(len(reference.inputs))
    ]
    metrics = _aggregate(per_prompt)
    margin = tolerance.near_tie_margin
    if margin is not None:
        thresholds["near_tie_margin"] = margin
        logits = (subject.logits, reference.outputs.logits)
        model = ctx.subject.model()
        metrics |= near_ties.assess(model, ctx.device, reference.inputs, per_prompt, logits, margin)
    metrics.update(
        reference=reference.kind, max_new_tokens=reference.max_new_tokens, per_prompt=per_prompt
    )
    ok = _within(metrics, tolerance)
    return verdict(
        NAME, ok, metrics=metrics, thresholds=thresholds, detail=_detail(metrics, tolerance, ok)
    )


def _shape_problem(subject: list[torch.Tensor], reference: list[torch.Tensor]) -> str | None:
    if len(subject) != len(reference):
        return f"The subject has logits for {len(subject)} prompts, the reference {len(reference)}."
    for index, (mine, theirs) in enumerate(zip(subject, reference, strict=True)):
        if mine.shape != theirs.shape:
            what = (
                "vocabulary sizes differ"
                if mine.shape[-1] != theirs.shape[-1]
                else "the numbers of positions differ"
            )
            return (
                f"The logits have different shapes on prompt {index}: subject "
                f"{list(mine.shape)} vs reference {list(theirs.shape)} ({what}), so the models "
                "are not the same."
            )
    return None


def _compare_prompt(
    index: int, reference: _Reference, subject: _Outputs, tokenizer: Any | None
) -> dict[str, Any]:
    mine, theirs = subject.greedy[index], reference.outputs.greedy[index]
    divergence = first_divergence(mine, theirs)
    entry: dict[str, Any] = {
        "index": index,
        "prompt_tokens": len(reference.inputs[index]),
        **logit_metrics(subject.logits[index], reference.outputs.logits[index]),
        "max_abs_logit_diff_by_position": by_position(
            subject.logits[index], reference.outputs.logits[index]
        ),
        "greedy_match": divergence is None,
        "first_divergent_step": divergence,
        "subject_continuation": mine,
        "reference_continuation": theirs,
    }
    prompt_text = reference.texts[index]
    if tokenizer is not None:
        prompt_text = (
            prompt_text if prompt_text is not None else _decode(tokenizer, reference.inputs[index])
        )
        entry.update(
            subject_text=_decode(tokenizer, mine),
            reference_text=_decode(tokenizer, theirs),
            subject_pieces=[_decode(tokenizer, [token]) for token in mine],
            reference_pieces=[_decode(tokenizer, [token]) for token in theirs],
        )
    entry["prompt_text"] = prompt_text
    return entry


def logit_metrics(subject: torch.Tensor, reference: torch.Tensor) -> dict[str, float | None]:
    """Differences of two [positions, vocab] logit tensors; None where a value is not finite."""
    mine, theirs = subject.double(), reference.double()
    difference = (mine - theirs).abs()
    reference_log_probs = torch.log_softmax(theirs, dim=-1)
    subject_log_probs = torch.log_softmax(mine, dim=-1)
    kl_per_position = (reference_log_probs.exp() * (reference_log_probs - subject_log_probs)).sum(
        -1
    )
    top1 = (mine.argmax(dim=-1) == theirs.argmax(dim=-1)).double().mean()
    return {
        "max_abs_logit_diff": _finite(difference.max()),
        "mean_abs_logit_diff": _finite(difference.mean()),
        # KL >= 0; rounding can leave a tiny negative residue for near-identical rows.
        "kl_divergence": _clamp_non_negative(_finite(kl_per_position.mean())),
        "top1_agreement": _finite(top1),
    }


def by_position(subject: torch.Tensor, reference: torch.Tensor) -> list[float | None]:
    """max |Δlogit| at each prompt position (where along the prompt two models drift apart)."""
    if subject.shape != reference.shape:
        return []
    difference = (subject.double() - reference.double()).abs().amax(dim=-1)
    return [_finite(value) for value in difference]


def first_divergence(subject: list[int], reference: list[int]) -> int | None:
    """Index of the first differing token; a length difference diverges where the shorter ends."""
    for step, (mine, theirs) in enumerate(zip(subject, reference, strict=False)):
        if mine != theirs:
            return step
    if len(subject) != len(reference):
        return min(len(subject), len(reference))
    return None


def _aggregate(per_prompt: list[dict[str, Any]]) -> dict[str, Any]:
    divergent = [entry for entry in per_prompt if entry["first_divergent_step"] is not None]
    earliest = min(divergent, key=lambda entry: entry["first_divergent_step"], default=None)
    return {
        "prompts": len(per_prompt),
        "max_abs_logit_diff": _worst(per_prompt, "max_abs_logit_diff", max),
        "mean_abs_logit_diff": _worst(per_prompt, "mean_abs_logit_diff", max),
        "kl_divergence": _worst(per_prompt, "kl_divergence", max),
        "top1_agreement": _worst(per_prompt, "top1_agreement", min),
        "greedy_match": not divergent,
        "first_divergent_step": None if earliest is None else earliest["first_divergent_step"],
        "first_divergent_prompt": None if earliest is None else earliest["index"],
        "divergent_prompts": [entry["index"] for entry in divergent],
    }


def _worst(per_prompt: list[dict[str, Any]], key: str, pick: Any) -> float | None:
    values = [entry[key] for entry in per_prompt]
    if any(value is None for value in values):
        return None  # a non-finite value is worse than any number
    result: float = pick(values)
    return result


def _within(metrics: dict[str, Any], tolerance: Tolerance) -> bool:
    """Near ties (half-precision drift only, see app.verify.near_ties) count as agreement."""
    max_abs, kl = metrics["max_abs_logit_diff"], metrics["kl_divergence"]
    top1 = metrics.get("top1_agreement_beyond_near_ties", metrics["top1_agreement"])
    return (
        max_abs is not None
        and kl is not None
        and top1 is not None
        and max_abs <= tolerance.max_abs_logit
        and kl <= tolerance.max_kl
        and top1 >= tolerance.min_top1_agreement
        and bool(metrics.get("greedy_ok", metrics["greedy_match"]))
    )


def _detail(metrics: dict[str, Any], tolerance: Tolerance, ok: bool) -> str:
    count = metrics["prompts"]
    summary = (
        f"max |Δlogit| {_number(metrics['max_abs_logit_diff'])} "
        f"(limit {_number(tolerance.max_abs_logit)}), KL {_number(metrics['kl_divergence'])} "
        f"(limit {_number(tolerance.max_kl)}), top-1 agreement "
        f"{_percent(metrics['top1_agreement'])} (minimum {_percent(tolerance.min_top1_agreement)})"
        f"{_near_tie_note(metrics)}; tolerance: {_tolerance_sources(tolerance)}"
    )
    against = f"the reference {metrics['reference']}"
    if ok:
        return f"All {count} prompts match {against}: {summary}; {_greedy_summary(metrics)}."
    if metrics["max_abs_logit_diff"] is None:
        return f"The logits contain NaN or infinite values, so they cannot match {against}."
    if metrics["greedy_match"]:
        greedy = "greedy continuations are still identical"
    else:
        greedy = (
            f"the greedy continuation of prompt {metrics['first_divergent_prompt']} diverges at "
            f"step {metrics['first_divergent_step']}"
        )
    return f"The subject does not match {against} on {count} prompts: {summary}; {greedy}."


def _near_tie_note(metrics: dict[str, Any]) -> str:
    ties = metrics.get("top1_near_ties")
    return f", {ties} top-1 differences at near ties" if ties else ""


def _tolerance_sources(tolerance: Tolerance) -> str:
    """`default for bfloat16 vs float32 on same device`, or each threshold's own source."""
    names = ("max_abs_logit", "min_top1_agreement", "max_kl")
    sources = {name: tolerance.sources.get(name, "") for name in names}
    if len(set(sources.values())) == 1:
        return sources[names[0]]
    return ", ".join(f"{source} for {name}" for name, source in sources.items())


def _greedy_summary(metrics: dict[str, Any]) -> str:
    if metrics["greedy_match"]:
        return "greedy continuations are identical"
    ties = metrics["greedy_near_tie_prompts"]
    return (
        f"the greedy continuations of prompts {', '.join(map(str, ties))} diverge, each at a "
        "near tie that the drift allowed between these dtypes can flip"
    )


def _decode(tokenizer: Any, ids: list[int]) -> str:
    return str(tokenizer.decode(ids))


def _finite(value: torch.Tensor) -> float | None:
    number = float(value)
    return number if torch.isfinite(value).item() else None


def _clamp_non_negative(value: float | None) -> float | None:
    return None if value is None else max(0.0, value)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
