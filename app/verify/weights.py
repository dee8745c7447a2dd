"""Check "weights": statistics of the stored tensors, and their differences from a reference.

Works from the stored safetensors alone (no model). It fails when a floating-point tensor holds
NaN/Inf or an embedding is constant (std 0: e.g. overwritten with ones, which shows mean 1, std 0).

With a reference checkpoint every tensor is compared. The rule for "unchanged":
  * same dtype on both sides: exactly equal (the stored bits must survive storage and reload;
    float32 on the same device is deterministic, so there is no reason to allow any slack);
  * different dtypes (a bfloat16 copy of a float32 checkpoint): the more precise side, rounded
    to the other's dtype, equals it bit for bit: exactly what a dtype conversion makes, nothing
    more (the relative change ‖ΔW‖_F / ‖W_ref‖_F, computed in float64, is reported).
Tensors present on one side only or with different shapes also fail the check.

Tensors are processed one at a time, in chunks of at most _CHUNK_ELEMENTS, always in float64, so
no second copy of the state dict (nor of a whole large tensor) is ever made.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from app.verify.base import CheckContext, CheckResult, verdict
from app.verify.stored_names import stored_parameters

NAME = "weights"
MAX_LISTED_TENSORS = 100
# 1M elements: a float64 temporary stays at 8 MB, below glibc's mmap threshold, so chunks
# reuse heap pages instead of faulting in fresh ones every time.
_CHUNK_ELEMENTS = 1 << 20
_TOKEN_EMBEDDING_NAMES = ("transformer.wte.weight", "wte.weight")
_POSITION_EMBEDDING_NAMES = ("transformer.wpe.weight", "wpe.weight")
_COMPARISON_RULE = (
    "same dtype: exactly equal; different dtypes: the more precise side rounded to the other's "
    "dtype is exactly equal"
)


@dataclass(frozen=True)
class TensorStats:
    mean: float
    std: float
    min: float
    max: float

    @property
    def constant(self) -> bool:
        return self.min == self.max

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


@dataclass(frozen=True)
class TensorDifference:
    name: str
    frobenius_diff: float | None
    relative_change: float | None  # None when not finite or the reference is all zeros
    max_abs_diff: float | None
    exactly_equal: bool
    within_tolerance: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "frobenius_diff": self.frobenius_diff,
            "relative_change": self.relative_change,
            "max_abs_diff": self.max_abs_diff,
        }


def run(ctx: CheckContext) -> CheckResult:
    subject = ctx.subject.state_dict()
    non_finite = non_finite_tensors(subject)
    embeddings = _embedding_report(subject, non_finite, _embedding_names(ctx, subject))
    constant = [role for role, entry in embeddings.items() if entry.get("constant_embedding")]
    metrics: dict[str, Any] = {
        "tensor_count": len(subject),
        "parameter_count": sum(tensor.numel() for tensor in subject.values()),
        "embeddings": embeddings,
        "constant_embedding": bool(constant),
        "non_finite_tensors": non_finite,
    }
    thresholds: dict[str, Any] = {"non_finite_tensors": 0, "constant_embedding": False}
    problems = _own_problems(non_finite, constant, embeddings)
    if ctx.reference is not None:
        comparison = compare_state_dicts(subject, ctx.reference.state_dict())
        metrics["comparison"] = comparison
        thresholds["comparison_rule"] = _COMPARISON_RULE
        problems += _comparison_problems(comparison)
    ok = not problems
    return verdict(
        NAME,
        ok,
        metrics=metrics,
        thresholds=thresholds,
        detail=_detail(metrics, problems, ctx.reference is not None),
    )


# --- one checkpoint --------------------------------------------------------------------------


def non_finite_tensors(state_dict: dict[str, torch.Tensor]) -> list[str]:
    return [
        name for name, tensor in state_dict.items() if _is_float(tensor) and not _finite(tensor)
    ]


def _finite(tensor: torch.Tensor) -> bool:
    """NaN propagates into min/max and ±Inf shows as one of them: no boolean temporaries."""
    for chunk in _chunks(tensor):
        if chunk.numel() == 0:
            continue
        low, high = torch.aminmax(chunk)
        if not (math.isfinite(float(low)) and math.isfinite(float(high))):
            return False
    return True


def tensor_stats(tensor: torch.Tensor) -> TensorStats:
    """mean/std (population)/min/max in float64, two passes over chunks (no cancellation)."""
    count = tensor.numel()
    if count == 0:
        return TensorStats(0.0, 0.0, 0.0, 0.0)
    total, low, high = 0.0, math.inf, -math.inf
    for chunk in _chunks(tensor):
        values = chunk.double()
        total += float(values.sum())
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    mean = total / count
    squares = sum(float((chunk.double() - mean).square().sum()) for chunk in _chunks(tensor))
    return TensorStats(mean=mean, std=math.sqrt(squares / count), min=low, max=high)


def find_embeddings(state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """{"token": name, "position": name} for the embeddings found (by name, see module doc)."""
    found: dict[str, str] = {}
    token = _by_name(state_dict, _TOKEN_EMBEDDING_NAMES)
    position = _by_name(state_dict, _POSITION_EMBEDDING_NAMES)
    if token is None:
        candidates = [
            name
            for name, tensor in state_dict.items()
            if "embed" in name.lower() and tensor.dim() == 2 and "pos" not in name.lower()
        ]
        token = max(candidates, key=lambda name: state_dict[name].numel(), default=None)
    if position is None:
        candidates = [
            name
            for name, tensor in state_dict.items()
            if "embed" in name.lower() and tensor.dim() == 2 and "pos" in name.lower()
        ]
        position = max(candidates, key=lambda name: state_dict[name].numel(), default=None)
    if token is not None:
        found["token"] = token
    if position is not None:
        found["position"] = position
    return found


def _by_name(state_dict: dict[str, torch.Tensor], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in state_dict:
            return name
    suffix = "." + names[-1]
    return next((name for name in state_dict if name.endswith(suffix)), None)


def _embedding_names(ctx: CheckContext, state_dict: dict[str, torch.Tensor]) -> dict[str, str]:
    """{"token", "output", "position"} -> stored tensor name. The token and output embeddings
    are the model's own (get_input_embeddings()/get_output_embeddings()) when it builds; by
    name otherwise, and for the position embedding, which models do not expose."""
    found = find_embeddings(state_dict)
    if ctx.subject.model_unavailable_reason is not None:
        return found
    try:
        model = ctx.subject.model()
    except Exception:  # the load check reports why; the stored tensors are still checked here
        return found
    names: dict[int, list[str]] = {}
    for name, parameter in stored_parameters(model).items():
        names.setdefault(id(parameter), []).append(name)
    for role, module in (
        ("token", model.get_input_embeddings()),
        ("output", model.get_output_embeddings()),
    ):
        weight = getattr(module, "weight", None)
        stored = [name for name in names.get(id(weight), []) if name in state_dict]
        if stored:
            found[role] = stored[0]
    return found


def _embedding_report(
    state_dict: dict[str, torch.Tensor], non_finite: list[str], names: dict[str, str]
) -> dict[str, dict[str, Any]]:
    report: dict[str, dict[str, Any]] = {}
    for role, name in names.items():
        if role == "output" and name == names.get("token"):
            report[role] = {"name": name, "tied_to": "token", "constant_embedding": False}
            continue
        tensor = state_dict[name]
        entry: dict[str, Any] = {"name": name, "shape": list(tensor.shape)}
        if name in non_finite or not tensor.is_floating_point():
            entry["constant_embedding"] = False
        else:
            stats = tensor_stats(tensor)
            entry.update(stats.as_dict(), constant_embedding=stats.constant)
        report[role] = entry
    return report


def _own_problems(
    non_finite: list[str], constant: list[str], embeddings: dict[str, dict[str, Any]]
) -> list[str]:
    problems = []
    if non_finite:
        shown = ", ".join(non_finite[:5]) + (" …" if len(non_finite) > 5 else "")
        problems.append(f"{len(non_finite)} tensors contain NaN or Inf ({shown})")
    for role in constant:
        entry = embeddings[role]
        problems.append(
            f"the {role} embedding {entry['name']} is constant (every value is "
            f"{entry['mean']:g}, std 0)"
        )
    return problems


# --- against a reference ---------------------------------------------------------------------


def compare_state_dicts(
    subject: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> dict[str, Any]:
    only_subject = sorted(set(subject) - set(reference))
    only_reference = sorted(set(reference) - set(subject))
    shape_mismatches = []
    differences = []
    for name in sorted(set(subject) & set(reference)):
        mine, theirs = subject[name], reference[name]
        if mine.shape != theirs.shape:
            shape_mismatches.append(
                {"name": name, "subject": list(mine.shape), "reference": list(theirs.shape)}
            )
            continue
        differences.append(tensor_difference(name, mine, theirs))
    changed = sorted(
        (entry for entry in differences if not entry.exactly_equal),
        key=lambda entry: -math.inf if entry.relative_change is None else -entry.relative_change,
    )
    return {
        "tensors_only_in_subject": only_subject,
        "tensors_only_in_reference": only_reference,
        "shape_mismatches": shape_mismatches,
        "identical_tensors": sum(entry.exactly_equal for entry in differences),
        "changed_tensor_count": len(changed),
        "changed_beyond_tolerance": sum(not entry.within_tolerance for entry in differences),
        "changed_tensors": [entry.as_dict() for entry in changed[:MAX_LISTED_TENSORS]],
    }


def tensor_difference(
    name: str, subject: torch.Tensor, reference: torch.Tensor
) -> TensorDifference:
    same_dtype = subject.dtype == reference.dtype
    if same_dtype and _identical(subject, reference):
        return TensorDifference(name, 0.0, 0.0, 0.0, exactly_equal=True, within_tolerance=True)
    squared_diff = squared_ref = max_abs = 0.0
    rounded = not same_dtype
    for mine, theirs in zip(_chunks(subject), _chunks(reference), strict=True):
        rounded = rounded and _equal_once_rounded(mine, theirs)
        theirs_wide = _widen(theirs)
        delta = (_widen(mine) - theirs_wide).abs()
        squared_diff += float(delta.square().sum())
        squared_ref += float(theirs_wide.abs().square().sum())
        max_abs = max(max_abs, float(delta.max()))
    frobenius = math.sqrt(squared_diff)
    finite = math.isfinite(frobenius) and math.isfinite(max_abs)
    relative = _relative(frobenius, math.sqrt(squared_ref)) if finite else None
    within = rounded and relative is not None
    return TensorDifference(
        name,
        frobenius_diff=frobenius if finite else None,
        relative_change=relative,
        max_abs_diff=max_abs if finite else None,
        exactly_equal=False,
        within_tolerance=within,
    )


def _identical(subject: torch.Tensor, reference: torch.Tensor) -> bool:
    """Equal values or equal bits (NaN != NaN, yet a NaN stored faithfully is not a change)."""
    if torch.equal(subject, reference):
        return True
    if not _is_float(subject):
        return False
    return torch.equal(_raw_bytes(subject), _raw_bytes(reference))


def _equal_once_rounded(subject: torch.Tensor, reference: torch.Tensor) -> bool:
    """The more precise of two float chunks, rounded to the other's dtype, equals it."""
    if not (subject.is_floating_point() and reference.is_floating_point()):
        return False
    coarse, fine = sorted((subject, reference), key=lambda t: -torch.finfo(t.dtype).eps)
    return _identical(fine.to(coarse.dtype), coarse)


def _raw_bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def _widen(chunk: torch.Tensor) -> torch.Tensor:
    return chunk.to(torch.complex128) if chunk.is_complex() else chunk.double()


def _relative(frobenius: float, reference_norm: float) -> float | None:
    if reference_norm == 0:
        return 0.0 if frobenius == 0 else None
    return frobenius / reference_norm


def _comparison_problems(comparison: dict[str, Any]) -> list[str]:
    problems = []
    if comparison["tensors_only_in_subject"]:
        problems.append(f"{len(comparison['tensors_only_in_subject'])} tensors only in the subject")
    if comparison["tensors_only_in_reference"]:
        problems.append(
            f"{len(comparison['tensors_only_in_reference'])} tensors only in the reference"
        )
    if comparison["shape_mismatches"]:
        problems.append(f"{len(comparison['shape_mismatches'])} tensors differ in shape")
    if comparison["changed_beyond_tolerance"]:
        top = comparison["changed_tensors"][0]
        relative = top["relative_change"]
        how = "" if relative is None else f", relative change {relative:.3g}"
        problems.append(
            f"{comparison['changed_beyond_tolerance']} tensors differ from the reference "
            f"(largest: {top['name']}{how})"
        )
    return problems


def _detail(metrics: dict[str, Any], problems: list[str], with_reference: bool) -> str:
    if problems:
        return "Weights check failed: " + "; ".join(problems) + "."
    count = metrics["tensor_count"]
    if not with_reference:
        return f"All {count} tensors are finite and no embedding is constant."
    comparison = metrics["comparison"]
    changed = comparison["changed_tensor_count"]
    if changed:
        return (
            f"All {count} tensors are finite; {changed} differ from the reference only by "
            "rounding to the other dtype (equal bit for bit once rounded)."
        )
    return f"All {count} tensors are finite and identical to the reference's."


# --- helpers ---------------------------------------------------------------------------------


def _is_float(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def _chunks(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    """Flat slices of at most _CHUNK_ELEMENTS (views when the tensor is contiguous)."""
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
        yield flat[start : start + _CHUNK_ELEMENTS]
