"""What the runtime knows of a stored checkpoint: a plain frozen record read from the database,
holding the same file and tensor records ingestion wrote (app.ingest.types).

The worker, the checks and the generation cache work with these, never with the API's response
models (`app/services/views.py`): the wire format may grow fields, rename them or change their
validation without touching model loading, and a record carries its tensors, so whoever loads a
checkpoint needs one object, not a view and a tensor list handed around side by side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from app.db.models import Checkpoint, TensorRow
from app.ingest.types import FileRecord, TensorRecord


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    name: str
    version: int
    format: str
    sha256: str
    size_bytes: int
    files: tuple[FileRecord, ...]
    tensors: tuple[TensorRecord, ...]
    parameter_count: int
    parameters_by_dtype: dict[str, int]
    weights_digest: str
    architecture: dict[str, Any] | None
    training: dict[str, Any] | None
    tokenizer: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def of(cls, row: Checkpoint, tensors: Iterable[TensorRow]) -> CheckpointRecord:
        return cls(
            id=row.id,
            name=row.name,
            version=row.version,
            format=row.format,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            files=tuple(FileRecord(f.path, f.size, f.sha256, _origin(f.origin)) for f in row.files),
            tensors=tuple(_tensor(t) for t in tensors),
            parameter_count=row.parameter_count,
            parameters_by_dtype=dict(row.parameters_by_dtype),
            weights_digest=row.weights_digest,
            architecture=row.architecture,
            training=row.training,
            tokenizer=row.tokenizer,
        )


def _origin(origin: str) -> Literal["member", "derived"]:
    return "derived" if origin == "derived" else "member"


def _tensor(row: TensorRow) -> TensorRecord:
    return TensorRecord(
        name=row.name,
        dtype=row.dtype,
        shape=tuple(row.shape),
        numel=row.numel,
        nbytes=row.nbytes,
        sha256=row.sha256,
        file=row.file,
    )
