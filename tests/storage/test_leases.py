"""Blob leases on a real database (SQLite, or PostgreSQL on its pass) and a real blob store:
the collector spares leased blobs, an upload waits for a delete in progress, leases are renewed
while held and a dead holder's lapse; the migration goes down and up."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from app.db.engine import Database
from app.db.migrate import alembic_config, upgrade
from app.db.models import utcnow
from app.db.repositories import BlobLeaseRepository
from app.storage.blobs import BlobStore
from app.storage.leases import DELETE, UPLOAD, BlobLeases


@pytest.fixture
def db(migrated_database: Database) -> Database:
    return migrated_database


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    blobs = BlobStore(tmp_path / "data")
    blobs.prepare()
    return blobs


def stored(store: BlobStore, content: bytes) -> str:
    digest = hashlib.sha256(content).hexdigest()
    source = store.tmp_dir / f"{digest}.part"
    source.write_bytes(content)
    store.put(source, digest)
    return digest


def lease(db: Database, digest: str, purpose: str, seconds: float) -> None:
    with db.transaction() as session:
        BlobLeaseRepository(session).add(
            f"held-{purpose}", [digest], purpose, utcnow() + timedelta(seconds=seconds)
        )


def test_leased_blobs_survive_collection_and_go_once_released(
    db: Database, store: BlobStore
) -> None:
    leases = BlobLeases(db, store)
    digest, other = stored(store, b"being adopted"), stored(store, b"nobody's")
    with leases.holding([digest]):
        assert leases.collect([digest, other]) == [other]
    assert store.exists(digest)
    assert leases.collect([digest]) == [digest]
    assert not store.exists(digest)


def test_a_dead_holders_lease_protects_nothing(db: Database, store: BlobStore) -> None:
    digest = stored(store, b"crashed upload")
    lease(db, digest, UPLOAD, seconds=-1)
    assert BlobLeases(db, store).collect([digest]) == [digest]


def test_an_upload_waits_for_a_delete_in_progress(db: Database, store: BlobStore) -> None:
    digest = stored(store, b"being deleted")
    lease(db, digest, DELETE, seconds=60)
    entered = threading.Event()

    def adopt() -> None:
        with BlobLeases(db, store).holding([digest]):
            entered.set()

    thread = threading.Thread(target=adopt)
    thread.start()
    assert not entered.wait(0.5), "the upload leased a blob a collector is deleting"
    with db.transaction() as session:
        BlobLeaseRepository(session).release(f"held-{DELETE}")
    assert entered.wait(30)
    thread.join()


def test_a_held_lease_is_renewed_past_its_length(db: Database, store: BlobStore) -> None:
    leases = BlobLeases(db, store, lease_seconds=1.5)
    digest = stored(store, b"long transfer")
    with leases.holding([digest]):
        time.sleep(3)  # twice the lease: only the renewals keep it alive
        assert leases.collect([digest]) == []
    assert leases.prune(every=False) == 0, "released, not left to expire"


def test_prune_drops_expired_leases_or_all(db: Database, store: BlobStore) -> None:
    leases = BlobLeases(db, store)
    lease(db, "a" * 64, UPLOAD, seconds=-1)
    lease(db, "b" * 64, DELETE, seconds=60)
    assert leases.prune(every=False) == 1
    assert leases.prune(every=True) == 1


def test_the_lease_migration_goes_down_and_up(database_url: str) -> None:
    upgrade(database_url)
    config = alembic_config(database_url)
    command.downgrade(config, "20261202_0005")
    db = Database(database_url)
    try:
        assert "blob_leases" not in inspect(db.engine).get_table_names()
        upgrade(database_url)
        assert "blob_leases" in inspect(db.engine).get_table_names()
    finally:
        db.dispose()
