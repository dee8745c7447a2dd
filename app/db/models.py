"""SQLAlchemy 2 typed models. Tables are created by Alembic migrations only."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Float, ForeignKey, Index, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Aware UTC. SQLite hands stored times back naive (they were written in UTC), PostgreSQL
    aware in its session's zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp column that always reads back as an aware UTC datetime, on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (
        Index("uq_checkpoints_name_version", "name", "version", unique=True),
        Index("uq_checkpoints_name_sha256", "name", "sha256", unique=True),
        Index("ix_checkpoints_weights_digest", "weights_digest"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int]
    # Always "ready": a row is written only once its upload was inspected. Resumable uploads
    # (inspected after they arrive) will add "pending" and "failed" with real transitions.
    status: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    uncompressed_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    parameter_count: Mapped[int] = mapped_column(BigInteger)
    parameters_by_dtype: Mapped[dict[str, Any]]
    tensor_count: Mapped[int]
    bytes_per_parameter: Mapped[float | None] = mapped_column(Float)
    weights_digest: Mapped[str] = mapped_column(String(64))
    largest_tensors: Mapped[list[Any]]
    architecture: Mapped[dict[str, Any] | None]
    config: Mapped[dict[str, Any] | None]
    training: Mapped[dict[str, Any] | None]
    tokenizer: Mapped[dict[str, Any]]
    user_metadata: Mapped[dict[str, Any]]
    # The API key (ApiKey.id) that uploaded it: what the per-key storage quota counts.
    uploaded_by: Mapped[str | None] = mapped_column(String(32), index=True)

    files: Mapped[list[CheckpointFile]] = relationship(
        back_populates="checkpoint", cascade="all, delete-orphan", order_by="CheckpointFile.path"
    )
    aliases: Mapped[list[Alias]] = relationship(
        back_populates="checkpoint", cascade="all, delete-orphan", order_by="Alias.alias"
    )


class CheckpointFile(Base):
    __tablename__ = "checkpoint_files"

    checkpoint_id: Mapped[str] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    origin: Mapped[str] = mapped_column(String(16))

    checkpoint: Mapped[Checkpoint] = relationship(back_populates="files")


class TensorRow(Base):
    __tablename__ = "tensors"

    checkpoint_id: Mapped[str] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(1024), primary_key=True)
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[list[Any]]
    numel: Mapped[int] = mapped_column(BigInteger)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    file: Mapped[str] = mapped_column(String(1024))


class Alias(Base):
    __tablename__ = "aliases"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    checkpoint_id: Mapped[str] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)

    checkpoint: Mapped[Checkpoint] = relationship(back_populates="aliases")


class Verification(Base):
    """One verification request and, once the worker ran it, its report."""

    __tablename__ = "verifications"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    checkpoint_id: Mapped[str] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    request: Mapped[dict[str, Any]]
    # A reference outputs document can be megabytes: loaded only by the worker that needs it.
    reference_outputs: Mapped[dict[str, Any] | None] = mapped_column(deferred=True)
    report: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Job(Base):
    """A unit of work for a worker, claimed with a lease that heartbeats extend."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_leased_until", "state", "leased_until"),
        Index("ix_jobs_state_finished_at", "state", "finished_at"),  # retention
        Index("ix_jobs_kind_state", "kind", "state"),  # the metrics' counts
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    worker_id: Mapped[str | None] = mapped_column(String(128))
    leased_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    error: Mapped[str | None] = mapped_column(Text)


class JobDurationBucket(Base):
    """Finished jobs counted into one histogram bucket (`le` is its upper bound, "+Inf" last).

    The queue adds to it in the transaction that finishes a job, so the histogram survives the
    jobs table's pruning and a scrape reads a few rows instead of every finished job.
    """

    __tablename__ = "job_duration_buckets"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), primary_key=True)
    le: Mapped[str] = mapped_column(String(16), primary_key=True)
    jobs: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)  # the durations' sum


class BlobLease(Base):
    """A claim on a blob that garbage collection respects (app.storage.leases).

    An upload holds an `upload` lease on its blobs from before their transfer until its
    checkpoint row commits; a collector holds a `delete` one while it removes a blob, and an
    upload of the same bytes waits for it to end. A lease past `expires_at` is a dead holder's.
    """

    __tablename__ = "blob_leases"
    __table_args__ = (Index("ix_blob_leases_sha256_expires_at", "sha256", "expires_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the holder's lease id
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())


class ApiKey(Base):
    """An API key: only an HMAC of the secret is kept (app.auth.keys)."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("uq_api_keys_key_hash", "key_hash", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    scope: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
