"""Which stored checkpoint serves a generation request, and loading it for the engine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.engine import Database
from app.db.models import Checkpoint
from app.db.repositories import CheckpointRepository
from app.errors import Conflict, NotFound
from app.records import CheckpointRecord
from app.runtime.loading import causal_lm_model_types


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


class GenerationCatalog:
    def __init__(
        self, db: Database, default_model: str | None, serving_dtype: str = "stored"
    ) -> None:
        self.db = db
        self.default_model = default_model
        self.serving_dtype = serving_dtype

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

    def _servable(self, row: Checkpoint) -> Servable:
        return _servable(row, self.serving_dtype)

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
