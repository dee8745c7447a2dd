"""Run the requested checks on a loaded checkpoint and assemble the report's check list."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from app.verify import (
    equivalence,
    integrity,
    load,
    resumability,
    round_trip,
    stability,
    weights,
)
from app.verify.base import CheckContext, CheckResult, LoadedCheckpoint
from app.verify.reference_outputs import default_prompts, default_token_ids
from app.verify.verdicts import Verdict, report_verdict, settle_assumptions

log = logging.getLogger(__name__)

CHECKS: dict[str, Callable[[CheckContext], CheckResult]] = {
    "integrity": integrity.run,
    "round_trip": round_trip.run,
    "load": load.run,
    "equivalence": equivalence.run,
    "stability": stability.run,
    "weights": weights.run,
    "resumability": resumability.run,
}


def run_checks(ctx: CheckContext) -> list[CheckResult]:
    results = []
    for name in ctx.options.checks:
        started = time.perf_counter()
        try:
            result = CHECKS[name](ctx)
        except Exception as exc:  # one broken check must not hide the others' results
            log.exception("check %s raised", name)
            result = CheckResult(name, "error", detail=f"{type(exc).__name__}: {exc}")
        result.seconds = time.perf_counter() - started
        results.append(_settled(result, ctx))
    return results


def _settled(result: CheckResult, ctx: CheckContext) -> CheckResult:
    reference = ctx.reference.view.architecture if ctx.reference is not None else None
    return settle_assumptions(result, ctx.subject.view.architecture, reference)


def overall_verdict(
    results: list[CheckResult], ctx: CheckContext, *, requested: tuple[str, ...] | None
) -> Verdict:
    """The report's status and summary (see app.verify.verdicts for the rules)."""
    has_reference = ctx.reference is not None or ctx.reference_outputs is not None
    return report_verdict(
        results, ctx.subject.view, requested=requested, has_reference=has_reference
    )


def choose_inputs(
    subject: LoadedCheckpoint,
    *,
    prompts: tuple[str, ...] | None,
    token_ids: tuple[tuple[int, ...], ...] | None,
) -> tuple[list[list[int]], list[str] | None]:
    """Token ids to feed the model, and the prompt texts they came from (if any)."""
    if token_ids:
        return [list(ids) for ids in token_ids], None
    tokenizer = subject.tokenizer() if subject.model_unavailable_reason is None else None
    if tokenizer is None:
        vocab = int((subject.view.architecture or {}).get("vocab_size") or 2)
        return default_token_ids(vocab), None
    texts = list(prompts) if prompts else default_prompts()
    return [list(tokenizer(text)["input_ids"]) for text in texts], texts


def check_inputs_fit(inputs: list[list[int]], architecture: dict[str, Any] | None) -> None:
    """Reject token ids the model cannot take before any check runs."""
    if not architecture:
        return
    vocab, context = architecture.get("vocab_size"), architecture.get("n_positions")
    for ids in inputs:
        if not ids:
            raise ValueError("an input has no tokens")
        if vocab and (min(ids) < 0 or max(ids) >= vocab):
            raise ValueError(f"token ids must be in [0, {vocab})")
        if context and len(ids) > context:
            raise ValueError(f"an input has {len(ids)} tokens; the model takes {context}")
