"""What the runtime knows of a stored checkpoint: plain frozen records read from the database.

The worker, the checks and the generation cache work with these, never with the API's response
models (`app/services/views.py`): the wire format may grow fields, rename them or change their
validation without touching model loading, and a record carries its tensors, so whoever loads a
checkpoint needs one object, not a view and a tensor list handed around side by side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.db.models import Checkpoint, TensorRow


@dataclass(frozen=True)
class StoredFile:
    path: str
    size: int
    sha256: str
    origin: str  # 'member': came in the upload; 'derived': written by the registry


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    numel: int
    nbytes: int
    sha256: str
    file: str

    @classmethod
    def of(cls, row: TensorRow) -> StoredTensor:
        return cls(
            name=row.name,
            dtype=row.dtype,
            shape=tuple(row.shape),
            numel=row.numel,
            nbytes=row.nbytes,
            sha256=row.sha256,
            file=row.file,
        )


@dataclass(frozen=True)
class CheckpointRecord:
    id: str
    name: str
    version: int
    format: str
    sha256: str
    size_bytes: int
    files: tuple[StoredFile, ...]
    tensors: tuple[StoredTensor, ...]
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
            files=tuple(StoredFile(f.path, f.size, f.sha256, f.origin) for f in row.files),
            tensors=tuple(StoredTensor.of(t) for t in tensors),
            parameter_count=row.parameter_count,
            parameters_by_dtype=dict(row.parameters_by_dtype),
            weights_digest=row.weights_digest,
            architecture=row.architecture,
            training=row.training,
            tokenizer=row.tokenizer,
        )
