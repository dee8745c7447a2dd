"""Queries over checkpoints, files, tensors and aliases. Repositories never commit."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, tuple_, update
from sqlalchemy.orm import Session, selectinload

from app.db.models import (
    Alias,
    BlobLease,
    Checkpoint,
    CheckpointFile,
    TensorRow,
    Verification,
)
from app.db.refs import LATEST, Ref, parse_ref
from app.errors import NotFound

# First keys of the PostgreSQL advisory locks that serialise writes to one name, and the
# adoption and collection of one blob (any constants, distinct).
_NAME_LOCK_CLASS = 0x636B7074
_BLOB_LOCK_CLASS = 0x636B7062


class CheckpointRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, ref: Ref) -> Checkpoint | None:
        query = select(Checkpoint).options(
            selectinload(Checkpoint.files), selectinload(Checkpoint.aliases)
        )
        if ref.id is not None:
            query = query.where(Checkpoint.id == ref.id)
        elif ref.version is not None:
            query = query.where(Checkpoint.name == ref.name, Checkpoint.version == ref.version)
        else:
            query = query.join(Alias, Alias.checkpoint_id == Checkpoint.id).where(
                Alias.name == ref.name, Alias.alias == (ref.alias or LATEST)
            )
        return self.session.scalars(query).first()

    def require(self, ref: str) -> Checkpoint:
        """The checkpoint `ref` names (id, name, name:alias, name@version), or NotFound."""
        row = self.get(parse_ref(ref))
        if row is None:
            raise NotFound(f"no checkpoint {ref!r}", code="checkpoint_not_found")
        return row

    def latest_verifications(self, checkpoint_ids: list[str]) -> dict[str, tuple[str, str]]:
        """checkpoint id -> (verification id, status) of its newest verification."""
        query = (
            select(Verification.checkpoint_id, Verification.id, Verification.status)
            .where(Verification.checkpoint_id.in_(checkpoint_ids))
            .order_by(Verification.created_at, Verification.id)
        )
        return {row[0]: (row[1], row[2]) for row in self.session.execute(query)}

    def find_same_upload(self, name: str, sha256: str) -> Checkpoint | None:
        return self.get_one(Checkpoint.name == name, Checkpoint.sha256 == sha256)

    def get_one(self, *conditions: object) -> Checkpoint | None:
        query = select(Checkpoint).where(*conditions)  # type: ignore[arg-type]
        query = query.options(selectinload(Checkpoint.files), selectinload(Checkpoint.aliases))
        return self.session.scalars(query).first()

    def next_version(self, name: str) -> int:
        """The version a new upload of `name` gets; the name stays locked until commit."""
        self.lock_name(name)
        current = self.session.scalar(
            select(func.max(Checkpoint.version)).where(Checkpoint.name == name)
        )
        return (current or 0) + 1

    def all_versions(self, name: str) -> Sequence[Checkpoint]:
        query = select(Checkpoint).where(Checkpoint.name == name)
        return self.session.scalars(query.order_by(Checkpoint.version)).all()

    def newest(self, name: str) -> Checkpoint | None:
        query = select(Checkpoint).where(Checkpoint.name == name)
        return self.session.scalars(query.order_by(Checkpoint.version.desc())).first()

    def page(
        self,
        *,
        name: str | None,
        alias: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> Sequence[Checkpoint]:
        query = select(Checkpoint).options(
            selectinload(Checkpoint.files), selectinload(Checkpoint.aliases)
        )
        if name is not None:
            query = query.where(Checkpoint.name == name)
        if alias is not None:
            query = query.join(Alias, Alias.checkpoint_id == Checkpoint.id).where(
                Alias.alias == alias
            )
        if after is not None:
            query = query.where(tuple_(Checkpoint.created_at, Checkpoint.id) < after)
        query = query.order_by(Checkpoint.created_at.desc(), Checkpoint.id.desc())
        return self.session.scalars(query.limit(limit)).all()

    def tensors(self, checkpoint_id: str) -> Sequence[TensorRow]:
        query = select(TensorRow).where(TensorRow.checkpoint_id == checkpoint_id)
        return self.session.scalars(query.order_by(TensorRow.file, TensorRow.name)).all()

    def set_alias(self, name: str, alias: str, checkpoint_id: str) -> None:
        self.lock_name(name)
        row = self.session.get(Alias, (name, alias))
        if row is None:
            self.session.add(Alias(name=name, alias=alias, checkpoint_id=checkpoint_id))
        else:
            row.checkpoint_id = checkpoint_id

    def remove_alias(self, name: str, alias: str) -> bool:
        result = self.session.execute(delete(Alias).where(Alias.name == name, Alias.alias == alias))
        return bool(getattr(result, "rowcount", 0))

    def lock_name(self, name: str) -> None:
        """Serialise the writers of one name's versions and aliases until the transaction ends.

        Two API processes on PostgreSQL would otherwise both read version N and both insert
        N + 1, or both insert the same new alias. SQLite needs nothing: BEGIN IMMEDIATE already
        serialises every write transaction.
        """
        if self.session.get_bind().dialect.name == "postgresql":
            key = func.hashtext(name)
            self.session.execute(select(func.pg_advisory_xact_lock(_NAME_LOCK_CLASS, key)))

    def referenced_digests(self) -> set[str]:
        files = self.session.scalars(select(CheckpointFile.sha256).distinct())
        uploads = self.session.scalars(select(Checkpoint.sha256).distinct())
        return set(files) | set(uploads)

    def digests_still_referenced(self, digests: set[str]) -> set[str]:
        if not digests:
            return set()
        files = select(CheckpointFile.sha256).where(CheckpointFile.sha256.in_(digests))
        uploads = select(Checkpoint.sha256).where(Checkpoint.sha256.in_(digests))
        return set(self.session.scalars(files)) | set(self.session.scalars(uploads))


class BlobLeaseRepository:
    """Leases on blobs (BlobLease); `lock` first, so that checking and writing them is atomic."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def lock(self, digests: Collection[str]) -> None:
        """Serialise, until the transaction ends, everyone deciding about these blobs.

        PostgreSQL: one advisory lock per digest, taken in sorted order so two holders of
        overlapping sets never deadlock. SQLite: BEGIN IMMEDIATE already holds its write lock.
        """
        if self.session.get_bind().dialect.name != "postgresql":
            return
        for digest in sorted(digests):
            key = func.hashtext(digest)
            self.session.execute(select(func.pg_advisory_xact_lock(_BLOB_LOCK_CLASS, key)))

    def held(self, digests: Collection[str], now: datetime, purpose: str | None = None) -> set[str]:
        """Those of `digests` that a live lease (of `purpose`, or any) names."""
        query = select(BlobLease.sha256).where(
            BlobLease.sha256.in_(digests), BlobLease.expires_at > now
        )
        if purpose is not None:
            query = query.where(BlobLease.purpose == purpose)
        return set(self.session.scalars(query.distinct()))

    def add(
        self, lease_id: str, digests: Collection[str], purpose: str, expires_at: datetime
    ) -> None:
        self.session.add_all(
            BlobLease(id=lease_id, sha256=digest, purpose=purpose, expires_at=expires_at)
            for digest in digests
        )

    def renew(self, lease_id: str, expires_at: datetime) -> None:
        self.session.execute(
            update(BlobLease).where(BlobLease.id == lease_id).values(expires_at=expires_at)
        )

    def release(self, lease_id: str) -> None:
        self.session.execute(delete(BlobLease).where(BlobLease.id == lease_id))

    def prune(self, before: datetime | None) -> int:
        """Drop leases that expired before `before` (None: every lease); returns how many."""
        query = delete(BlobLease)
        if before is not None:
            query = query.where(BlobLease.expires_at <= before)
        return int(getattr(self.session.execute(query), "rowcount", 0) or 0)
