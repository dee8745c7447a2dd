"""What a report may claim: which checks apply to which kind of checkpoint, and the verdict.

The one place that decides it:
  * a check that applies to the checkpoint's kind (or that the request named) and could not run
    makes the report `inconclusive`, never `passed`;
  * a model-level check computed on an architecture the registry inferred (a guessed head count)
    is `inconclusive`, naming the assumption and how to supply the real value;
  * `passed` means every check that was requested, or that applies, ran and passed.

Kinds: a `language_model` has an architecture (a config was uploaded, found or inferred); a
`weights_only` artifact (an MLP state_dict) has none, so only the checks that work from the stored
bytes and tensors apply (integrity, round_trip, weights).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from app.verify.base import CHECK_NAMES, CheckResult

if TYPE_CHECKING:
    from app.records import CheckpointRecord

Kind = Literal["language_model", "weights_only"]
WEIGHT_LEVEL_CHECKS = ("integrity", "round_trip", "weights")
MODEL_LEVEL_CHECKS = ("load", "equivalence", "stability")
SUPPLY_CONFIG = (
    "upload the weights with their config (`config=` on POST /v1/checkpoints, `ckpt upload "
    "--config config.json`, or the UI's config field) under a new name or after deleting this "
    "version (a byte-identical upload under the same name returns the stored one)"
)
_SEVERITY = ("error", "failed", "inconclusive", "passed")


@dataclass(frozen=True)
class Verdict:
    status: str
    summary: dict[str, Any]

    @property
    def complete(self) -> bool:
        """Every check that applies to this kind of checkpoint was requested."""
        return bool(self.summary["complete"])


def checkpoint_kind(view: CheckpointRecord) -> Kind:
    return "language_model" if view.architecture else "weights_only"


def applicable_checks(view: CheckpointRecord, *, has_reference: bool) -> tuple[str, ...]:
    """The checks a full verification of this checkpoint must run and pass."""
    names = set(WEIGHT_LEVEL_CHECKS)
    if checkpoint_kind(view) == "language_model":
        names |= {"load", "stability"}
    if has_reference:
        names.add("equivalence")
    if isinstance((view.training or {}).get("optimizer"), Mapping):
        names.add("resumability")
    return tuple(name for name in CHECK_NAMES if name in names)


# --- assumptions ---------------------------------------------------------------------------


def assumptions_of(architecture: Mapping[str, Any] | None) -> list[str]:
    """What an inferred architecture assumed (empty when it came from a real config)."""
    if not architecture or not architecture.get("inferred"):
        return []
    stated = architecture.get("assumptions")
    if isinstance(stated, list) and stated:
        return [str(item) for item in stated]
    return [f"n_head {architecture.get('n_head')} (inferred from tensor shapes, heads 64 wide)"]


def settle_assumptions(
    result: CheckResult,
    subject: Mapping[str, Any] | None,
    reference: Mapping[str, Any] | None = None,
) -> CheckResult:
    """A model-level verdict on an assumed architecture becomes `inconclusive`."""
    if result.name not in MODEL_LEVEL_CHECKS or result.status not in ("passed", "failed"):
        return result
    assumed = [f"the subject's {text}" for text in assumptions_of(subject)]
    if result.name == "equivalence":
        assumed += [f"the reference's {text}" for text in assumptions_of(reference)]
    if not assumed:
        return result
    result.metrics["verdict_on_assumption"] = result.status
    result.metrics["assumptions"] = assumed
    result.detail = (
        f"Computed on an assumed value, {'; '.join(assumed)}, not on the model's "
        f"own config. Under that assumption it {result.status}: {result.detail} To get a "
        f"verdict, {SUPPLY_CONFIG}."
    )
    result.status = "inconclusive"
    return result


# --- the report's verdict ------------------------------------------------------------------


def report_verdict(
    results: list[CheckResult],
    view: CheckpointRecord,
    *,
    requested: tuple[str, ...] | None,
    has_reference: bool,
) -> Verdict:
    """The overall status and the summary shown at the top of the report.

    `requested` is the request's explicit check list, or None for the default (every check).
    """
    kind = checkpoint_kind(view)
    applicable = applicable_checks(view, has_reference=has_reference)
    required = set(requested) if requested is not None else set(applicable)
    reasons = _reasons(results, required, explicit=requested is not None)
    statuses = {result.status for result in results}
    if reasons["missing"]:
        statuses.add("inconclusive")
    status = next(level for level in _SEVERITY if level in statuses or level == "passed")
    ran = [result.name for result in results if result.status in ("passed", "failed")]
    not_run = [
        {"name": result.name, "status": result.status, "reason": result.detail}
        for result in results
        if result.status not in ("passed", "failed")
    ]
    not_run += [
        {"name": name, "status": "not_requested", "reason": "not requested"}
        for name in applicable
        if name not in {result.name for result in results}
    ]
    summary: dict[str, Any] = {
        "kind": kind,
        "applicable": list(applicable),
        "checked": ran,
        "not_checked": not_run,
        "complete": set(applicable) <= {result.name for result in results},
        "reasons": reasons["missing"] + reasons["other"],
    }
    summary["line"] = _line(status, kind, summary, results)
    return Verdict(status, summary)


def _reasons(
    results: list[CheckResult], required: set[str], *, explicit: bool
) -> dict[str, list[str]]:
    why = "was requested" if explicit else "applies to this checkpoint"
    missing = [
        f"{result.name} {why} but could not run: {result.detail}"
        for result in results
        if result.status == "not_applicable" and result.name in required
    ]
    other = [
        f"{result.name} {result.status}: {result.detail}"
        for result in results
        if result.status in ("error", "failed", "inconclusive")
    ]
    return {"missing": missing, "other": other}


def _line(status: str, kind: Kind, summary: dict[str, Any], results: list[CheckResult]) -> str:
    """One sentence for people: what passed, what did not and on what assumption, what did not
    run; the full reasons are in `reasons`."""
    passed = [result.name for result in results if result.status == "passed"]
    parts = [f"{status}: " + (f"{_names(passed)} passed" if passed else "no check passed")]
    for level in ("error", "failed", "inconclusive"):
        names = [result.name for result in results if result.status == level]
        if names:
            parts.append(f"{_names(names)} {level}")
    assumed = next((r.detail for r in results if r.status == "inconclusive"), None)
    if assumed:
        parts[-1] += f" ({_first_clause(assumed)})"
    parts += [_first_clause(reason) for reason in summary["reasons"] if "could not run" in reason]
    skipped = [
        entry
        for entry in summary["not_checked"]
        if entry["status"] == "not_applicable"
        and not any(reason.startswith(f"{entry['name']} ") for reason in summary["reasons"])
    ]
    if skipped:
        listed = ", ".join(f"{item['name']} ({_first_clause(item['reason'])})" for item in skipped)
        parts.append(f"not run: {listed}")
    if kind == "weights_only" and status == "passed":
        parts.append(
            "a weights-only artifact of unknown architecture: its stored bytes and every tensor "
            "are proven intact; no model was built or run"
        )
    return "; ".join(parts) + "."


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _first_clause(text: str) -> str:
    return text.rstrip(".").split(". ")[0]
