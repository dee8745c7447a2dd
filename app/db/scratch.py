"""Throwaway PostgreSQL databases, for the test suite and the benchmarks.

Each is created on the server `admin_url` names (by default `CKPT_TEST_POSTGRES_URL`, else a local
server as user postgres) under a `ckpt_test_` name, and only databases with that prefix are ever
dropped. The ones this process created and has not dropped are remembered for `drop_leftovers`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    import psycopg

ADMIN_URL = os.environ.get(
    "CKPT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
_PREFIX = "ckpt_test_"
_CREATED: set[str] = set()  # this process's databases, dropped at the end if one leaked


def create_database(label: str, admin_url: str = ADMIN_URL) -> str:
    """A new empty database on `admin_url`'s server; returns its SQLAlchemy URL."""
    name = f"{_PREFIX}{_slug(label)}_{uuid.uuid4().hex[:8]}"
    with admin_connection(admin_url) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    _CREATED.add(name)
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    name = make_url(url).database
    assert name is not None and name.startswith(_PREFIX), name
    with admin_connection(admin_url) as connection:
        # FORCE: a killed worker's connection may linger until the server notices it is gone.
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _CREATED.discard(name)


def drop_leftovers() -> None:
    for name in sorted(_CREATED):
        drop_database(make_url(ADMIN_URL).set(database=name).render_as_string(False))


@contextmanager
def admin_connection(
    admin_url: str, connect_timeout: int = 10
) -> Iterator[psycopg.Connection[object]]:
    """An autocommit connection (CREATE/DROP DATABASE cannot run inside a transaction)."""
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


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label.lower())[:30]
