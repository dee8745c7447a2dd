"""Settings from the environment (prefix CKPT_)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from app.ingest.types import IngestLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CKPT_", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str | None = None
    max_upload_bytes: int = 20 << 30
    max_uncompressed_bytes: int = 64 << 30
    max_zip_entries: int = 10_000
    torch_memory_bytes: int = 8 << 30
    torch_cpu_seconds: int = 600
    device: str = "auto"
    embedded_worker: bool = True
    job_lease_seconds: float = 30.0
    job_max_attempts: int = 3
    worker_poll_seconds: float = 0.5
    default_model: str | None = None
    model_cache_bytes: int = 4 << 30
    max_queue: int = 64
    max_batch: int = 8
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    # app.generation.Exactness (not imported here: it would pull torch into every import)
    exact_batching: Literal["always", "seeded", "never"] = "seeded"
    host: str = "127.0.0.1"
    port: int = 8000

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.sqlite3').resolve()}"

    @cached_property
    def ingest_limits(self) -> IngestLimits:
        return IngestLimits(
            max_zip_entries=self.max_zip_entries,
            max_uncompressed_bytes=self.max_uncompressed_bytes,
            torch_memory_bytes=self.torch_memory_bytes,
            torch_cpu_seconds=self.torch_cpu_seconds,
        )
