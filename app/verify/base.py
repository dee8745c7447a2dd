"""The contract between the runner and the checks.

A check is a function `run(ctx: CheckContext) -> CheckResult`. The runner loads each model once
and caches forward passes, so checks that need the same outputs never compute them twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from app.services.views import CheckpointView, TensorView

CheckStatus = Literal["passed", "failed", "not_applicable", "error"]
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
        """True/False for a verdict; None when the check did not apply."""
        if self.status == "not_applicable":
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


@dataclass(frozen=True)
class Tolerance:
    """Thresholds of the output checks; defaults depend on dtype and device (see defaults())."""

    max_abs_logit: float
    min_top1_agreement: float
    max_kl: float
    max_variance: float

    @classmethod
    def defaults(cls, *, same_device: bool, dtype: str) -> Tolerance:
        if dtype in ("float32", "float64") and same_device:
            return cls(max_abs_logit=1e-5, min_top1_agreement=1.0, max_kl=1e-6, max_variance=0.0)
        return cls(max_abs_logit=1e-2, min_top1_agreement=0.99, max_kl=1e-3, max_variance=1e-6)


@dataclass(frozen=True)
class VerifyOptions:
    checks: tuple[str, ...]
    prompts: tuple[str, ...] | None = None
    token_ids: tuple[tuple[int, ...], ...] | None = None
    tolerance: Tolerance | None = None
    repeats: int = 3
    max_new_tokens: int = 32


class LoadedCheckpoint:
    """A stored checkpoint made loadable: its files laid out in `folder` (links to blobs).

    Subclassed by the worker, which knows how to load; checks only use this interface.
    """

    view: CheckpointView
    folder: Path
    tensors: list[TensorView]

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
    cache: dict[str, Any] = field(default_factory=dict)

    def tolerance(self) -> Tolerance:
        """The request's tolerance, else the default for this dtype and pair of devices.

        A reference checkpoint is loaded on the same device as the subject; an outputs document
        says where it was recorded, and another device type gets the looser defaults.
        """
        if self.options.tolerance is not None:
            return self.options.tolerance
        dtype = next(iter(self.subject.view.parameters_by_dtype), "float32")
        same_device = True
        if self.reference is None and self.reference_outputs is not None:
            recorded_on = str(self.reference_outputs.get("device", "cpu")).split(":")[0]
            same_device = recorded_on == self.device.type
        return Tolerance.defaults(same_device=same_device, dtype=dtype)
