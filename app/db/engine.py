"""Engine, sessions and the unit of work.

SQLite runs in WAL mode with a busy timeout and foreign keys on. Write transactions start with
BEGIN IMMEDIATE so concurrent writers queue on the busy timeout instead of failing with
"database is locked"; read transactions stay deferred so readers never wait on writers.
PostgreSQL needs none of that (its sessions run in UTC); what SQLite's single writer gave for
free, its callers take explicitly (row locks, advisory locks: see app/jobs, app/db/repositories).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.errors import InsufficientStorage

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "ckpt_write"


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def reading(self) -> Iterator[Session]:
        with self._read() as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A write unit of work: commits when the block ends, rolls back on any exception."""
        try:
            with self._write() as session, session.begin():
                yield session
        except OperationalError as exc:
            if getattr(exc.orig, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise InsufficientStorage(
                    "the server ran out of disk space while writing to the database"
                ) from exc
            raise

    def dispose(self) -> None:
        self.engine.dispose()


def make_engine(url: str) -> Engine:
    if url.startswith(("postgresql://", "postgresql+psycopg")):  # libpq-based drivers
        # Timestamps come back in UTC, as on SQLite, whatever the server's TimeZone is.
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c timezone=UTC"})
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
    )
    event.listen(engine, "connect", _configure_sqlite)
    event.listen(engine, "begin", _begin_sqlite)
    return engine


def _configure_sqlite(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy emit BEGIN itself (see _begin_sqlite) instead of pysqlite's implicit one.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_sqlite(conn: Any) -> None:
    writing = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")
