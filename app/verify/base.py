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

    @classmethod
    def defaults(cls, *, same_device: bool, dtype: str) -> Tolerance:
        where = "same" if same_device else "other"
        sources = dict.fromkeys(TOLERANCE_FIELDS, f"default for {dtype} on {where} device")
        if dtype in _EXACT_DTYPES and same_device:
            return cls(1e-5, 1.0, 1e-6, 0.0, sources)
        return cls(1e-2, 0.99, 1e-3, 1e-6, sources)

    def overridden(self, requested: Mapping[str, float]) -> Tolerance:
        """These thresholds with the requested ones in their place; the others stay as they are."""
        values = {name: requested.get(name, getattr(self, name)) for name in TOLERANCE_FIELDS}
        sources = {
            name: REQUESTED if name in requested else self.sources.get(name, "")
            for name in TOLERANCE_FIELDS
        }
        return Tolerance(**values, sources=sources)

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
        defaults = Tolerance.defaults(same_device=same_device, dtype=self._compared_dtype())
        return defaults.overridden(self.options.tolerance or {})

    def _reference_device(self) -> str | None:
        if self.reference is not None or self.reference_outputs is None:
            return None
        return str(self.reference_outputs.get("device", "cpu")).split(":")[0]

    def _compared_dtype(self) -> str:
        dtypes = [_main_dtype(self.subject.view.parameters_by_dtype)]
        if self.reference is not None:
            dtypes.append(_main_dtype(self.reference.view.parameters_by_dtype))
        elif self.reference_outputs is not None:
            dtypes.append(str(self.reference_outputs.get("dtype") or "float32"))
        return next((d for d in dtypes if d not in _EXACT_DTYPES), dtypes[0])


def _main_dtype(parameters_by_dtype: Mapping[str, int]) -> str:
    """The dtype holding most parameters (float32 when nothing is recorded)."""
    return max(parameters_by_dtype, key=lambda d: parameters_by_dtype[d], default="float32")
