"""Settings from the environment (prefix CKPT_)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlparse

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.ingest.types import IngestLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CKPT_", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str | None = None
    # Where blobs live: unset or file:///dir (local disk), or s3://bucket/prefix (endpoint and
    # credentials from the AWS_* variables); files read from S3 are cached locally, LRU-bounded.
    storage_url: str | None = None
    blob_cache_bytes: int = 20 << 30
    # Materialised checkpoint folders (links to blobs, <data>/cache/checkpoints/<id>) kept beyond
    # those in use, least recently used removed first; their bytes are the blob cache's above.
    model_folder_cache_entries: int = Field(256, ge=1)
    # Unreferenced blobs and temp files younger than this survive the startup sweep: another
    # process sharing the storage may be in the middle of an upload. None: 3600 with s3://,
    # 0 on a local data dir (set it when several API processes share one).
    orphan_grace_seconds: float | None = None
    max_upload_bytes: int = 20 << 30
    max_uncompressed_bytes: int = 64 << 30
    max_zip_entries: int = 10_000
    torch_memory_bytes: int = 8 << 30
    torch_cpu_seconds: int = 600
    # Uploads are inspected on their own thread pool, apart from the one sync routes and key
    # checks use; at most MAX_TORCH_LOADERS sandboxed pickle loaders run at once in a process, an
    # upload waits up to TORCH_LOADER_WAIT_SECONDS for one, then answers 503 with Retry-After.
    ingest_threads: int = Field(default_factory=lambda: 2 * (os.cpu_count() or 1), ge=1)
    max_torch_loaders: int = Field(2, ge=1)
    torch_loader_wait_seconds: float = Field(60.0, ge=0)
    device: str = "auto"
    embedded_worker: bool = True
    job_lease_seconds: float = 30.0
    job_max_attempts: int = 3
    worker_poll_seconds: float = 0.5
    # Finished jobs are deleted once older than this or beyond the newest COUNT (0: keep none);
    # the job-duration histogram keeps counting them. Workers prune every PRUNE_SECONDS.
    job_retention_seconds: float = 7 * 24 * 3600
    job_retention_count: int = 10_000
    job_prune_seconds: float = 300.0
    default_model: str | None = None
    model_cache_bytes: int = 4 << 30
    max_queue: int = 64
    max_batch: int = 8
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_new_tokens: int = 1024
    max_input_chars: int = 256 << 10
    # app.generation.Exactness (not imported here: it would pull torch into every import)
    exact_batching: Literal["always", "seeded", "never"] = "seeded"
    # Generation serves models in their stored dtype, or all parameters cast to this one.
    serving_dtype: Literal["stored", "bfloat16", "float16", "float32"] = "stored"
    host: str = "127.0.0.1"
    port: int = 8000
    # Abuse limits: an upload body that stalls this long, or arrives slower than the minimum
    # rate once this long has passed, answers 408; uvicorn answers 503 past the concurrency.
    body_timeout_seconds: float = 60.0
    min_body_bytes_per_second: int = 1024
    limit_concurrency: int | None = None
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # API keys (app.auth): `auto` requires a key once any exists, or off loopback.
    auth: Literal["auto", "required", "off"] = "auto"
    key_pepper: SecretStr | None = None
    rate_limit_per_minute: int | None = None
    key_quota_bytes: int | None = None

    # Every path is made absolute with its symlinks resolved here, once: the embedded worker,
    # symlinks in the model cache and `relative_to` between paths must never depend on the
    # working directory or on how a path was spelled.
    @field_validator("data_dir")
    @classmethod
    def _resolved_data_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _resolved_sqlite_path(cls, value: str | None) -> str | None:
        if not value:
            return value
        from sqlalchemy.engine import make_url

        url = make_url(value)
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return value
        resolved = url.set(database=str(Path(url.database).expanduser().resolve()))
        return resolved.render_as_string(hide_password=False)

    @field_validator("storage_url")
    @classmethod
    def _known_storage_scheme(cls, value: str | None) -> str | None:
        url = urlparse(value or "")
        if value and url.scheme not in ("file", "s3"):
            raise ValueError("must be file:///dir or s3://bucket/prefix")
        if url.scheme != "file":
            return value
        if url.netloc not in ("", "localhost"):  # file://data/blobs: a host, not a path
            raise ValueError(f"must be file:///dir (an absolute path), not {value!r}")
        return f"file://{quote(str(Path(unquote(url.path)).resolve()))}"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'registry.sqlite3'}"

    @cached_property
    def ingest_limits(self) -> IngestLimits:
        return IngestLimits(
            max_zip_entries=self.max_zip_entries,
            max_uncompressed_bytes=self.max_uncompressed_bytes,
            torch_memory_bytes=self.torch_memory_bytes,
            torch_cpu_seconds=self.torch_cpu_seconds,
        )
