"""What the client returns: typed copies of the server's JSON (unknown fields are kept)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class StoredFile(_Model):
    path: str
    size: int
    sha256: str
    origin: str


class Checkpoint(_Model):
    id: str
    name: str
    version: int
    ref: str
    aliases: list[str]
    status: str  # "ready" (the only state the server has today)
    format: str
    filename: str | None = None
    created_at: datetime
    size_bytes: int
    uncompressed_bytes: int
    compression_ratio: float
    sha256: str
    files: list[StoredFile]
    parameter_count: int
    parameters_by_dtype: dict[str, int]
    tensor_count: int
    bytes_per_parameter: float | None = None
    largest_tensors: list[dict[str, Any]] = Field(default_factory=list)
    weights_digest: str
    architecture: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    tokenizer: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    verification: dict[str, str] | None = None
    created: bool = Field(False, description="set by upload: false when already stored")


class CheckpointPage(_Model):
    items: list[Checkpoint]
    next_cursor: str | None = None


class Tensor(_Model):
    name: str
    dtype: str
    shape: list[int]
    numel: int
    nbytes: int
    sha256: str
    file: str


class TensorList(_Model):
    checkpoint_id: str
    tensors: list[Tensor]


class TensorDiff(_Model):
    name: str
    status: str
    dtype_a: str | None = None
    dtype_b: str | None = None
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    frobenius_delta: float | None = None
    max_abs_diff: float | None = None
    relative_change: float | None = None


class CheckpointDiff(_Model):
    a: str
    b: str
    summary: dict[str, int]
    identical_weights: bool
    tensors: list[TensorDiff]


class CheckpointRef(_Model):
    id: str
    name: str
    version: int


VerificationStatus = Literal["queued", "running", "passed", "failed", "inconclusive", "error"]


class Verification(_Model):
    id: str
    status: VerificationStatus
    summary: dict[str, Any] | None = Field(
        None, description="the verdict's line, what was and was not checked, and why"
    )
    checkpoint: CheckpointRef
    created_at: datetime
    finished_at: datetime | None = None
    request: dict[str, Any] = Field(default_factory=dict)
    device: str | None = None
    library_versions: dict[str, str] | None = None
    timings: dict[str, float] | None = None
    checks: list[dict[str, Any]] = Field(default_factory=list)
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status not in ("queued", "running")

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def inconclusive(self) -> bool:
        """Neither passed nor failed: a check could not run or rested on an assumption."""
        return self.status == "inconclusive"


class VerificationList(_Model):
    items: list[Verification]


class Token(_Model):
    id: int
    text: str
    logprob: float | None = None
    special: bool = False


class GenerationDetails(_Model):
    finish_reason: str
    generated_tokens: int
    seed: int | None = None
    tokens: list[Token] = Field(default_factory=list)


class Generation(_Model):
    generated_text: str
    details: GenerationDetails | None = None


class StreamedToken(_Model):
    """One event of /generate_stream; the last one carries `generated_text` (and details)."""

    index: int | None = None
    token: Token
    generated_text: str | None = None
    details: dict[str, Any] | None = None


class CompletionChoice(_Model):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None


class Usage(_Model):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(_Model):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(_Model):
    id: str
    created: int
    owned_by: str


class Health(_Model):
    status: str
    problems: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"
