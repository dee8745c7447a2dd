"""Which database the suite runs on, and throwaway PostgreSQL databases for it.

`CKPT_TEST_DATABASE=postgresql` makes every LiveServer, WorkerProcess and `database_url` fixture
use a fresh PostgreSQL database (created on the server `CKPT_TEST_POSTGRES_URL` names, dropped
afterwards); the default, `sqlite`, keeps the SQLite file in each data directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    import psycopg

SQLITE, POSTGRESQL = "sqlite", "postgresql"
TEST_DATABASE = os.environ.get("CKPT_TEST_DATABASE", SQLITE)
ADMIN_URL = os.environ.get(
    "CKPT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
_PREFIX = "ckpt_test_"
# data dir -> the database a LiveServer created for it, so workers started on it find it too
_DATABASES: dict[Path, str] = {}
_CREATED: set[str] = set()  # this process's databases, dropped at the end if a test leaked one

if TEST_DATABASE not in (SQLITE, POSTGRESQL):
    raise RuntimeError(f"CKPT_TEST_DATABASE must be {SQLITE} or {POSTGRESQL}, not {TEST_DATABASE}")


def on_postgresql() -> bool:
    return TEST_DATABASE == POSTGRESQL


@cache
def postgres_unreachable() -> str | None:
    """None when the PostgreSQL server answers, else why not (checked once per session)."""
    try:
        with _admin_connection(ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:
        where = make_url(ADMIN_URL).render_as_string(hide_password=True)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"PostgreSQL at {where} is not reachable ({type(exc).__name__}: {first_line})"


def create_database(label: str, admin_url: str = ADMIN_URL) -> str:
    """A new empty database on `admin_url`'s server; returns its SQLAlchemy URL."""
    name = f"{_PREFIX}{_slug(label)}_{uuid.uuid4().hex[:8]}"
    with _admin_connection(admin_url) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    _CREATED.add(name)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    name = make_url(url).database
    assert name is not None and name.startswith(_PREFIX), name
    with _admin_connection(admin_url) as connection:
        # FORCE: a killed worker's connection may linger until the server notices it is gone.
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _CREATED.discard(name)


def drop_leftovers() -> None:
    for name in sorted(_CREATED):
        drop_database(make_url(ADMIN_URL).set(database=name).render_as_string(False))


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


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower())[:30]


@contextmanager
def _admin_connection(
    admin_url: str, connect_timeout: int = 10
) -> Iterator[psycopg.Connection[object]]:
    import psycopg

    url = make_url(admin_url)
    connection = psycopg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        dbname=url.database or "postgres",
        autocommit=True,
        connect_timeout=connect_timeout,
    )
    try:
        yield connection
    finally:
        connection.close()
