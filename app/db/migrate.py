"""Alembic driven from code: upgrade to head, and the check the server runs before starting."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema_problem(engine: Engine, url: str) -> str | None:
    """None when the database is at the latest migration, else what is wrong and how to fix it."""
    current, head = current_revision(engine), head_revision(url)
    if current == head:
        return None
    where = f"at revision {current}" if current else "not initialised"
    return (
        f"The database ({engine.url.render_as_string(hide_password=True)}) is {where}; "
        f"the code needs revision {head}. Run `ckpt migrate` (`make serve` does it for you)."
    )
