"""Which stored checkpoint serves a generation request, and loading it for the engine."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.engine import Database
from app.db.models import Checkpoint, Verification
from app.db.repositories import CheckpointRepository
from app.errors import Conflict, NotFound
from app.records import CheckpointRecord
from app.runtime.loading import causal_lm_model_types
from app.services.verification_views import ReferenceSpec, VerificationRequest
from app.services.verifications import VerificationService

_IN_FLIGHT = ("queued", "running")


@dataclass(frozen=True)
class Servable:
    """A checkpoint that can generate text: a known architecture and a tokenizer."""

    id: str
    ref: str
    name: str
    sha256: str
    created_at: datetime
    max_positions: int
    dtype: str  # served: the stored dtype, or CKPT_SERVING_DTYPE
    stored_dtype: str
    serving_drift: dict[str, Any] | None = None  # None when served as stored


class GenerationCatalog:
    def __init__(
        self,
        db: Database,
        default_model: str | None,
        serving_dtype: str = "stored",
        verifications: VerificationService | None = None,
    ) -> None:
        self.db = db
        self.default_model = default_model
        self.serving_dtype = serving_dtype
        self.verifications = verifications
        self._drift_lock = threading.Lock()

    def resolve(self, ref: str | None) -> Servable:
        """The checkpoint `ref` names, or the default model when `ref` is None."""
        with self.db.reading() as session:
            repo = CheckpointRepository(session)
            if ref is not None:
                return self._servable(repo.require(ref))
            if self.default_model:
                return self._servable(repo.require(self.default_model))
            row = _newest_servable(session)
            if row is None:
                raise NotFound(
                    "no checkpoint can serve generation yet: upload a causal language model "
                    "with a tokenizer, or set CKPT_DEFAULT_MODEL",
                    code="no_default_model",
                )
            return self._servable(row)

    def describe(self, checkpoint_id: str) -> CheckpointRecord:
        """What the model cache needs to load a checkpoint from the blob store."""
        with self.db.reading() as session:
            repo = CheckpointRepository(session)
            row = repo.require(checkpoint_id)
            return CheckpointRecord.of(row, repo.tensors(row.id))

    def loading(self, checkpoint_id: str) -> CheckpointRecord:
        """`describe` for the model cache's loader: loading a checkpoint to serve it in another
        dtype than its stored one queues the verification measuring that drift, once."""
        record = self.describe(checkpoint_id)
        if self.verifications is None or self.serving_dtype == "stored":
            return record
        with self._drift_lock:
            served = self.resolve(checkpoint_id)  # requests resolve (or refuse) it first
            if served.serving_drift == _NOT_MEASURED:
                reference = ReferenceSpec(dtype=served.dtype)
                self.verifications.request(checkpoint_id, VerificationRequest(reference=reference))
        return record

    def _servable(self, row: Checkpoint) -> Servable:
        servable = _servable(row, self.serving_dtype)
        if servable.dtype == servable.stored_dtype:
            return servable
        session = Session.object_session(row)
        assert session is not None
        drift = _serving_drift(session, row.id, servable.dtype)
        return replace(servable, serving_drift=drift)

    def servable(self) -> list[Servable]:
        with self.db.reading() as session:
            rows = session.scalars(
                select(Checkpoint).order_by(Checkpoint.created_at.desc(), Checkpoint.id)
            ).all()
            return [self._servable(row) for row in rows if _problem(row) is None]


def _newest_servable(session: Session) -> Checkpoint | None:
    rows = session.scalars(select(Checkpoint).order_by(Checkpoint.created_at.desc(), Checkpoint.id))
    return next((row for row in rows if _problem(row) is None), None)


def _problem(row: Checkpoint) -> str | None:
    model_type = (row.architecture or {}).get("model_type")
    if model_type not in causal_lm_model_types():
        return f"checkpoint {row.name}@{row.version} cannot generate text: " + (
            "its architecture is unknown"
            if model_type is None
            else f"{model_type!r} models are not served"
        )
    if not (row.tokenizer or {}).get("present"):
        return f"checkpoint {row.name}@{row.version} has no tokenizer, so it cannot take text"
    return None


def _servable(row: Checkpoint, serving_dtype: str) -> Servable:
    problem = _problem(row)
    if problem:
        raise Conflict(problem, code="not_servable")
    architecture = row.architecture or {}
    stored = next(iter(row.parameters_by_dtype), "float32")
    return Servable(
        id=row.id,
        ref=f"{row.name}@{row.version}",
        name=row.name,
        sha256=row.weights_digest,
        created_at=row.created_at,
        max_positions=int(
            architecture.get("context_length") or architecture.get("n_positions") or 1024
        ),
        dtype=stored if serving_dtype == "stored" else serving_dtype,
        stored_dtype=stored,
    )


_NOT_MEASURED = {"verification": None, "status": "not_measured"}


def _serving_drift(session: Session, checkpoint_id: str, dtype: str) -> dict[str, Any]:
    """The latest finished verification against this checkpoint's own weights cast to `dtype`,
    else the one in flight; only figures that report measured."""
    rows = session.scalars(
        select(Verification)
        .where(Verification.checkpoint_id == checkpoint_id)
        .order_by(Verification.created_at.desc(), Verification.id)
    ).all()
    drifts = [r for r in rows if (r.request.get("reference") or {}).get("dtype") == dtype]
    finished = next((r for r in drifts if r.status not in _IN_FLIGHT), None)
    if finished is not None:
        return _measured(finished)
    if drifts:
        return {"verification": drifts[0].id, "status": drifts[0].status}
    return dict(_NOT_MEASURED)


def _measured(row: Verification) -> dict[str, Any]:
    checks = {c["name"]: c for c in (row.report or {}).get("checks", [])}
    equivalence = checks.get("equivalence") or {}
    metrics = equivalence.get("metrics") or {}
    sources = (equivalence.get("thresholds") or {}).get("sources") or {}
    figures = {
        "max_abs_logit": metrics.get("max_abs_logit_diff"),
        "mean_abs_logit": metrics.get("mean_abs_logit_diff"),
        "kl": metrics.get("kl_divergence"),
        "top1_agreement": metrics.get("top1_agreement"),
        "greedy_match": metrics.get("greedy_match"),
        "tolerance": "; ".join(sorted(set(sources.values()))) or None,
    }
    measured = {name: value for name, value in figures.items() if value is not None}
    return {"verification": row.id, "status": row.status, **measured}
