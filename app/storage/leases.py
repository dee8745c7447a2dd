"""Adopting and collecting blobs safely across threads, processes and replicas.

No lock is held over I/O. An upload leases its blobs in the database (committed) before it
transfers them and releases the lease once its checkpoint row has committed. A collector decides
about one blob in a short transaction that locks it (PostgreSQL: an advisory lock keyed by the
sha256; SQLite: BEGIN IMMEDIATE): it deletes only a blob that no checkpoint references and no live
lease names, and leases it for deletion while the delete runs, so that an upload of the same
bytes waits for the delete and then stores them again instead of adopting a blob about to go.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from app.db.engine import Database
from app.db.models import new_id, utcnow
from app.db.repositories import BlobLeaseRepository, CheckpointRepository
from app.storage.base import BlobStorage

log = logging.getLogger(__name__)

UPLOAD, DELETE = "upload", "delete"
UPLOAD_LEASE_SECONDS = 300.0  # renewed every third of that while the upload holds it
DELETE_LEASE_SECONDS = 120.0  # one delete call; a crashed collector's lease lapses after it
WAIT_SECONDS = 0.05  # between looks at a blob another process is deleting


class BlobLeases:
    def __init__(
        self, db: Database, store: BlobStorage, *, lease_seconds: float = UPLOAD_LEASE_SECONDS
    ) -> None:
        self.db = db
        self.store = store
        self.lease_seconds = lease_seconds

    @contextmanager
    def holding(self, digests: Collection[str]) -> Iterator[None]:
        """Lease `digests` for an upload: no collector removes them until the block ends."""
        lease_id = new_id()
        self._take(lease_id, digests)
        renewal = _Renewal(self, lease_id)
        try:
            yield
        finally:
            renewal.stop()
            with self.db.transaction() as session:
                BlobLeaseRepository(session).release(lease_id)

    def collect(self, digests: Iterable[str]) -> list[str]:
        """Delete those of `digests` that nothing references or leases; returns those deleted."""
        deleted = []
        for digest in sorted(set(digests)):
            lease_id = self._claim_for_deletion(digest)
            if lease_id is None:
                continue
            try:
                self.store.delete(digest)
            finally:
                with self.db.transaction() as session:
                    BlobLeaseRepository(session).release(lease_id)
            deleted.append(digest)
        return deleted

    def prune(self, *, every: bool) -> int:
        """Drop expired leases, or every lease (`every`: at the start of the only process that
        uses the storage, whose earlier life held them)."""
        with self.db.transaction() as session:
            return BlobLeaseRepository(session).prune(None if every else utcnow())

    def renew(self, lease_id: str) -> None:
        with self.db.transaction() as session:
            BlobLeaseRepository(session).renew(lease_id, self._expiry(self.lease_seconds))

    def _take(self, lease_id: str, digests: Collection[str]) -> None:
        """Write the lease once no collector is deleting one of the blobs (it waits for that)."""
        while True:
            with self.db.transaction() as session:
                leases = BlobLeaseRepository(session)
                leases.lock(digests)
                if not leases.held(digests, utcnow(), purpose=DELETE):
                    leases.add(lease_id, digests, UPLOAD, self._expiry(self.lease_seconds))
                    return
            time.sleep(WAIT_SECONDS)

    def _claim_for_deletion(self, digest: str) -> str | None:
        """A delete lease on the blob when nothing references or leases it, else None."""
        with self.db.transaction() as session:
            leases = BlobLeaseRepository(session)
            leases.lock([digest])
            if CheckpointRepository(session).digests_still_referenced({digest}):
                return None
            if leases.held([digest], utcnow()):
                return None
            lease_id = new_id()
            leases.add(lease_id, [digest], DELETE, self._expiry(DELETE_LEASE_SECONDS))
            return lease_id

    @staticmethod
    def _expiry(seconds: float) -> datetime:
        return utcnow() + timedelta(seconds=seconds)


class _Renewal:
    """Extends an upload's lease while it is held, so a long transfer never outlives it."""

    def __init__(self, leases: BlobLeases, lease_id: str) -> None:
        self.leases = leases
        self.lease_id = lease_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="blob-lease", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.leases.lease_seconds / 3):
            try:
                self.leases.renew(self.lease_id)
            except Exception:  # the next round tries again; the lease still has two thirds
                log.warning("could not renew blob lease %s", self.lease_id, exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
