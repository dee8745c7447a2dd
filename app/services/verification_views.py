"""Request and report models of verifications."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from app.db.models import Checkpoint, Verification
from app.runtime.casting import CastDtype
from app.services.views import UtcDateTime

CheckName = Literal[
    "integrity", "round_trip", "load", "equivalence", "stability", "weights", "resumability"
]


class ReferenceSpec(BaseModel):
    """Exactly one of: another stored checkpoint, a reference outputs document, or the
    checkpoint's own weights cast to `dtype` (the drift of serving it in that dtype)."""

    checkpoint: str | None = None
    outputs: dict[str, Any] | None = None
    dtype: CastDtype | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ReferenceSpec:
        given = [
            value for value in (self.checkpoint, self.outputs, self.dtype) if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of reference.checkpoint, reference.outputs or reference.dtype"
            )
        return self


class ToleranceSpec(BaseModel):
    max_abs_logit: float | None = Field(None, ge=0)
    min_top1_agreement: float | None = Field(None, ge=0, le=1)
    max_kl: float | None = Field(None, ge=0)
    max_variance: float | None = Field(None, ge=0)


class VerificationRequest(BaseModel):
    reference: ReferenceSpec | None = None
    prompts: list[str] | None = Field(None, max_length=16)
    token_ids: list[list[int]] | None = Field(None, max_length=16)
    checks: list[CheckName] | None = None
    tolerance: ToleranceSpec | None = None
    device: str = "auto"
    repeats: int = Field(3, ge=2, le=20)
    max_new_tokens: int = Field(32, ge=0, le=256)


class CheckpointRef(BaseModel):
    id: str
    name: str
    version: int


class VerificationView(BaseModel):
    id: str
    status: str = Field(description="queued, running, passed, failed, inconclusive or error")
    summary: dict[str, Any] | None = Field(
        None,
        description="the verdict in one `line`, the checkpoint's `kind`, the checks that apply, "
        "were `checked` and were not (`not_checked`, with reasons), `complete`, and the "
        "`reasons` a report is not passed",
    )
    checkpoint: CheckpointRef
    created_at: UtcDateTime
    finished_at: UtcDateTime | None
    request: dict[str, Any]
    device: str | None = None
    library_versions: dict[str, str] | None = None
    timings: dict[str, float] | None = None
    checks: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None

    @classmethod
    def of(cls, row: Verification, checkpoint: Checkpoint) -> VerificationView:
        report = row.report or {}
        return cls(
            id=row.id,
            status=row.status,
            summary=report.get("summary"),
            checkpoint=CheckpointRef(
                id=checkpoint.id, name=checkpoint.name, version=checkpoint.version
            ),
            created_at=row.created_at,
            finished_at=row.finished_at,
            request=row.request,
            device=report.get("device"),
            library_versions=report.get("library_versions"),
            timings=report.get("timings"),
            checks=report.get("checks", []),
            error=report.get("error"),
        )


class VerificationList(BaseModel):
    items: list[VerificationView]
