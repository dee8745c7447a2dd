"""Which database the suite runs on, and throwaway PostgreSQL databases for it.

`CKPT_TEST_DATABASE=postgresql` makes every LiveServer, WorkerProcess and `database_url` fixture
use a fresh PostgreSQL database (app.db.scratch: created on the server `CKPT_TEST_POSTGRES_URL`
names, dropped afterwards); the default, `sqlite`, keeps the SQLite file in each data directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from sqlalchemy.engine import make_url

from app.db.scratch import ADMIN_URL, admin_connection, create_database, drop_database

SQLITE, POSTGRESQL = "sqlite", "postgresql"
TEST_DATABASE = os.environ.get("CKPT_TEST_DATABASE", SQLITE)
# data dir -> the database a LiveServer created for it, so workers started on it find it too
_DATABASES: dict[Path, str] = {}

if TEST_DATABASE not in (SQLITE, POSTGRESQL):
    raise RuntimeError(f"CKPT_TEST_DATABASE must be {SQLITE} or {POSTGRESQL}, not {TEST_DATABASE}")


def on_postgresql() -> bool:
    return TEST_DATABASE == POSTGRESQL


@cache
def postgres_unreachable() -> str | None:
    """None when the PostgreSQL server answers, else why not (checked once per session)."""
    try:
        with admin_connection(ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:
        where = make_url(ADMIN_URL).render_as_string(hide_password=True)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"PostgreSQL at {where} is not reachable ({type(exc).__name__}: {first_line})"


@contextmanager
def fresh_database(label: str, sqlite_url: str) -> Iterator[str]:
    """A new PostgreSQL database on the PostgreSQL pass, else `sqlite_url`."""
    if not on_postgresql():
        yield sqlite_url
        return
    url = create_database(label)
    try:
        yield url
    finally:
        drop_database(url)


def remember(data_dir: Path, url: str) -> None:
    _DATABASES[data_dir.resolve()] = url


def forget(data_dir: Path) -> None:
    _DATABASES.pop(data_dir.resolve(), None)


def database_url_for(data_dir: Path) -> str | None:
    """The database a LiveServer on `data_dir` uses, when it is not the data dir's SQLite file."""
    return _DATABASES.get(data_dir.resolve())


def database_env(url: str | None) -> dict[str, str]:
    """Environment for a `ckpt` subprocess that must use `url` (nothing for the default)."""
    return {"CKPT_DATABASE_URL": url} if url else {}
