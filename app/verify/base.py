"""The contract between the runner and the checks.

A check is a function `run(ctx: CheckContext) -> CheckResult`. The runner loads each model once
and caches forward passes, so checks that need the same outputs never compute them twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.ingest.types import IngestLimits

if TYPE_CHECKING:
    import torch

    from app.ingest.types import TensorRecord
    from app.records import CheckpointRecord

# inconclusive: the check ran but its verdict rests on an assumption (an inferred head count),
# or a report could not run a check it was asked for; neither passed nor failed.
CheckStatus = Literal["passed", "failed", "inconclusive", "not_applicable", "error"]
CHECK_NAMES = (
    "integrity",
    "round_trip",
    "load",
    "equivalence",
    "stability",
    "weights",
    "resumability",
)


@dataclass
class CheckResult:
    name: str
    status: CheckStatus
    metrics: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool | None:
        """True/False for a verdict; None when the check did not apply or was inconclusive."""
        if self.status in ("not_applicable", "inconclusive"):
            return None
        return self.status == "passed"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "passed": self.passed,
            "metrics": self.metrics,
            "thresholds": self.thresholds,
            "detail": self.detail,
            "seconds": round(self.seconds, 6),
        }


def not_applicable(name: str, reason: str) -> CheckResult:
    return CheckResult(name, "not_applicable", detail=reason)


def verdict(name: str, ok: bool, **fields: Any) -> CheckResult:
    return CheckResult(name, "passed" if ok else "failed", **fields)


_EXACT_DTYPES = ("float32", "float64")
# (max |Δlogit|, top-1 agreement, KL, variance) for drift across dtypes, by the less precise
# one. bfloat16 keeps 8 significant bits, float16 11: its rounding error is 8x smaller, and so
# is the drift measured on the test models (README: "Tolerances across dtypes").
_HALF_PRECISION = {
    "bfloat16": (0.5, 0.99, 1e-3, 1e-6),
    "float16": (0.0625, 0.99, 1e-4, 1e-6),
}
TOLERANCE_FIELDS = ("max_abs_logit", "min_top1_agreement", "max_kl", "max_variance")
REQUESTED = "requested"


@dataclass(frozen=True)
class Tolerance:
    """Thresholds of the output checks; defaults depend on dtype and device (see defaults()).

    `sources` says where each threshold came from: "requested", or the default it fell back to.
    """

    max_abs_logit: float
    min_top1_agreement: float
    max_kl: float
    max_variance: float
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    # Half-precision drift between the pair, where near ties are expected (see near_tie_margin).
    half_precision_drift: bool = field(default=False, compare=False)

    @classmethod
    def defaults(
        cls, *, same_device: bool, dtype: str, other_dtype: str | None = None
    ) -> Tolerance:
        """`dtype` is the least precise of the pair; `other_dtype` the other side's when the
        pair differs in dtype (a bfloat16 copy of a float32 checkpoint)."""
        where = "same" if same_device else "other"
        pair = f"{dtype} vs {other_dtype}" if other_dtype else dtype
        sources = dict.fromkeys(TOLERANCE_FIELDS, f"default for {pair} on {where} device")
        if same_device and (dtype in _EXACT_DTYPES or other_dtype is None):
            return cls(1e-5, 1.0, 1e-6, 0.0, sources)
        if dtype in _HALF_PRECISION:
            return cls(*_HALF_PRECISION[dtype], sources=sources, half_precision_drift=True)
        return cls(1e-2, 0.99, 1e-3, 1e-6, sources)

    @property
    def near_tie_margin(self) -> float | None:
        """For half-precision drift: a top-1 pick whose lead is at most this (twice the allowed
        |Δlogit|, what two sides within tolerance can swap) is a near tie, not a difference."""
        return 2 * self.max_abs_logit if self.half_precision_drift else None

    def overridden(self, requested: Mapping[str, float]) -> Tolerance:
        """These thresholds with the requested ones in their place; the others stay as they are."""
        values = {name: requested.get(name, getattr(self, name)) for name in TOLERANCE_FIELDS}
        sources = {
            name: REQUESTED if name in requested else self.sources.get(name, "")
            for name in TOLERANCE_FIELDS
        }
        return Tolerance(**values, sources=sources, half_precision_drift=self.half_precision_drift)

    def thresholds(self, *names: str) -> dict[str, Any]:
        """The named thresholds for a check's report, with where each one came from."""
        return {name: getattr(self, name) for name in names} | {
            "sources": {name: self.sources.get(name, "") for name in names}
        }


@dataclass(frozen=True)
class VerifyOptions:
    checks: tuple[str, ...]
    prompts: tuple[str, ...] | None = None
    token_ids: tuple[tuple[int, ...], ...] | None = None
    tolerance: Mapping[str, float] | None = None  # the requested thresholds only
    repeats: int = 3
    max_new_tokens: int = 32


class LoadedCheckpoint:
    """A stored checkpoint made loadable: its files laid out in `folder` (links to blobs).

    Subclassed by the worker, which knows how to load; checks only use this interface.
    """

    view: CheckpointRecord
    folder: Path
    tensors: tuple[TensorRecord, ...]

    @property
    def model_unavailable_reason(self) -> str | None:
        """None when a model can be built; else why model-level checks do not apply."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor from the stored safetensors files, on the CPU (loaded once)."""
        raise NotImplementedError

    def model(self) -> Any:
        """The transformers model on the job's device, in eval mode (loaded once)."""
        raise NotImplementedError

    def tokenizer(self) -> Any | None:
        raise NotImplementedError


@dataclass
class CheckContext:
    subject: LoadedCheckpoint
    options: VerifyOptions
    device: torch.device
    inputs: list[list[int]]
    reference: LoadedCheckpoint | None = None
    reference_outputs: dict[str, Any] | None = None
    blob_path: Any = None  # Callable[[str], Path]: sha256 -> stored blob
    limits: IngestLimits = field(default_factory=IngestLimits)  # the server's, for re-scans
    cache: dict[str, Any] = field(default_factory=dict)

    def tolerance(self, *, same_device: bool | None = None) -> Tolerance:
        """The requested thresholds; each one not requested takes this comparison's default.

        The default depends on the pair of devices and the least precise dtype compared. A
        reference checkpoint is loaded on the subject's device; an outputs document says where
        it was recorded. `same_device=True` is for comparisons of this device with itself.
        """
        if same_device is None:
            same_device = self._reference_device() in (None, self.device.type)
        dtype, other_dtype = self._compared_dtypes()
        defaults = Tolerance.defaults(same_device=same_device, dtype=dtype, other_dtype=other_dtype)
        return defaults.overridden(self.options.tolerance or {})

    def _reference_device(self) -> str | None:
        if self.reference is not None or self.reference_outputs is None:
            return None
        return str(self.reference_outputs.get("device", "cpu")).split(":")[0]

    def _compared_dtypes(self) -> tuple[str, str | None]:
        """(least precise dtype of the pair, the other side's dtype when the two differ)."""
        dtypes = [_main_dtype(self.subject.view.parameters_by_dtype)]
        if self.reference is not None:
            dtypes.append(_main_dtype(self.reference.view.parameters_by_dtype))
        elif self.reference_outputs is not None:
            dtypes.append(str(self.reference_outputs.get("dtype") or "float32"))
        least = next((d for d in dtypes if d not in _EXACT_DTYPES), dtypes[0])
        other = next((d for d in dtypes if d != least), None)
        return least, other


def _main_dtype(parameters_by_dtype: Mapping[str, int]) -> str:
    """The dtype holding most parameters (float32 when nothing is recorded)."""
    return max(parameters_by_dtype, key=lambda d: parameters_by_dtype[d], default="float32")
