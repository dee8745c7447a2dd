"""Helpers: keys made the way `ckpt keys create` makes them; the CLI as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from app.auth.keys import CreatedKey
from app.auth.scopes import Scope
from app.auth.service import Authenticator
from app.config import Settings
from app.db.engine import Database
from app.db.migrate import upgrade
from tests.worker_process import ROOT


def create_key(
    settings: Settings, name: str, scope: Scope, quota_bytes: int | None = None
) -> CreatedKey:
    db = Database(settings.resolved_database_url)
    try:
        return Authenticator(db, settings).keys.create(name, scope, quota_bytes)
    finally:
        db.dispose()


def migrated_data_dir(data_dir: Path) -> Path:
    """A data dir with its SQLite database at the latest schema (as `ckpt migrate` leaves it)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(Settings(data_dir=data_dir, database_url=None).resolved_database_url)
    return data_dir


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def run_cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env={**os.environ, "CKPT_DATA_DIR": str(data_dir), **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
