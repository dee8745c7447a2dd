"""Plain objects the services hand out (never ORM rows); also the API's response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from app.db.models import Checkpoint, TensorRow, as_utc

# Every datetime a view hands out: aware UTC, so the API writes ISO 8601 ending in `Z` (the
# columns read back aware already; this covers views built from in-memory values too).
UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]


class FileView(BaseModel):
    path: str
    size: int
    sha256: str
    origin: str = Field(description="'member': came in the upload; 'derived': written by us")


class CheckpointView(BaseModel):
    id: str
    name: str
    version: int
    ref: str = Field(description="name@version")
    aliases: list[str]
    status: Literal["ready"] = Field(
        description="always ready: a checkpoint is stored only once its upload was inspected"
    )
    format: str
    filename: str | None
    created_at: UtcDateTime
    size_bytes: int
    uncompressed_bytes: int
    compression_ratio: float
    sha256: str
    files: list[FileView]
    parameter_count: int
    parameters_by_dtype: dict[str, int]
    tensor_count: int
    bytes_per_parameter: float | None
    largest_tensors: list[dict[str, Any]]
    weights_digest: str
    architecture: dict[str, Any] | None
    training: dict[str, Any] | None
    tokenizer: dict[str, Any]
    metadata: dict[str, Any]
    verification: dict[str, str] | None = Field(
        None, description="the newest verification: id and status"
    )

    @classmethod
    def of(cls, row: Checkpoint) -> CheckpointView:
        return cls(
            id=row.id,
            name=row.name,
            version=row.version,
            ref=f"{row.name}@{row.version}",
            aliases=[a.alias for a in row.aliases],
            status="ready",
            format=row.format,
            filename=row.filename,
            created_at=row.created_at,
            size_bytes=row.size_bytes,
            uncompressed_bytes=row.uncompressed_bytes,
            compression_ratio=row.size_bytes / row.uncompressed_bytes
            if row.uncompressed_bytes
            else 1.0,
            sha256=row.sha256,
            files=[
                FileView(path=f.path, size=f.size, sha256=f.sha256, origin=f.origin)
                for f in row.files
            ],
            parameter_count=row.parameter_count,
            parameters_by_dtype=row.parameters_by_dtype,
            tensor_count=row.tensor_count,
            bytes_per_parameter=row.bytes_per_parameter,
            largest_tensors=row.largest_tensors,
            weights_digest=row.weights_digest,
            architecture=row.architecture,
            training=row.training,
            tokenizer=row.tokenizer,
            metadata=row.user_metadata,
        )


class CheckpointPage(BaseModel):
    items: list[CheckpointView]
    next_cursor: str | None


class TensorView(BaseModel):
    name: str
    dtype: str
    shape: list[int]
    numel: int
    nbytes: int
    sha256: str
    file: str

    @classmethod
    def of(cls, row: TensorRow) -> TensorView:
        return cls(
            name=row.name,
            dtype=row.dtype,
            shape=list(row.shape),
            numel=row.numel,
            nbytes=row.nbytes,
            sha256=row.sha256,
            file=row.file,
        )


class TensorList(BaseModel):
    checkpoint_id: str
    tensors: list[TensorView]
