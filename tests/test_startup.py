"""The schema is owned by migrations, and the server refuses a database that is behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from app.db.engine import make_engine
from app.db.migrate import head_revision, upgrade
from app.db.models import Base


def test_migrations_create_exactly_the_models(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_migrations_have_one_head(tmp_path: Path) -> None:
    assert head_revision(f"sqlite:///{tmp_path / 'x.sqlite3'}") is not None


def test_serve_refuses_an_unmigrated_database(tmp_path: Path, database_url: str) -> None:
    env = {
        **os.environ,
        "CKPT_DATA_DIR": str(tmp_path / "data"),
        "CKPT_PORT": "1",
        "CKPT_DATABASE_URL": database_url,
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "ckpt migrate" in result.stderr
    assert "not initialised" in result.stderr


@pytest.mark.sqlite_only  # looks for the SQLite file in the data dir
def test_migrate_then_schema_is_current(tmp_path: Path) -> None:
    env = {**os.environ, "CKPT_DATA_DIR": str(tmp_path / "data")}
    migrated = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrated.returncode == 0, migrated.stderr
    assert (tmp_path / "data" / "registry.sqlite3").is_file()
