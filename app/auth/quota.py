"""Per-key storage quotas: the bytes of the uploads a key made, against its limit.

The upload route stops reading at the quota (UploadQuota); the insert transaction checks again
(enforce_quota) with the key locked until it commits, so concurrent uploads by one key, on any
number of API processes, cannot overrun it together.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth.errors import QuotaExceeded
from app.auth.service import Principal
from app.db.engine import Database
from app.db.models import Checkpoint
from app.errors import PayloadTooLarge

T = TypeVar("T")

# First key of the PostgreSQL advisory locks that serialise one key's quota checks (any constant
# distinct from app.db.repositories' lock classes).
_QUOTA_LOCK_CLASS = 0x636B7071


def used_bytes(session: Session, key_id: str) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(Checkpoint.size_bytes), 0)).where(
            Checkpoint.uploaded_by == key_id
        )
    )
    return int(total or 0)


def enforce_quota(session: Session, key_id: str | None, limit: int | None, incoming: int) -> None:
    if key_id is None or limit is None:
        return
    _lock_key(session, key_id)
    used = used_bytes(session, key_id)
    if used + incoming > limit:
        raise _exceeded(key_id, limit, used, incoming)


def _lock_key(session: Session, key_id: str) -> None:
    """Hold the key until the transaction (which inserts the upload's row) ends: another
    replica's check then counts that row. SQLite's BEGIN IMMEDIATE already serialises it."""
    if session.get_bind().dialect.name == "postgresql":
        key = func.hashtext(key_id)
        session.execute(select(func.pg_advisory_xact_lock(_QUOTA_LOCK_CLASS, key)))


def _exceeded(key_id: str, limit: int, used: int, incoming: int | None) -> QuotaExceeded:
    size = f"{incoming} more bytes" if incoming is not None else "more bytes than remain"
    return QuotaExceeded(
        f"API key {key_id} has a storage quota of {limit} bytes and uses {used}; "
        f"this upload needs {size}"
    )


@dataclass(frozen=True)
class UploadQuota:
    """What one upload may still add for its key; no limit when key_id or limit is None."""

    key_id: str | None
    limit: int | None
    used: int

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def check_announced(self, content_length: int | None) -> None:
        remaining = self.remaining
        if remaining is not None and content_length is not None and content_length > remaining:
            raise self._exceeded(content_length)

    def spool_limit(self, max_upload_bytes: int) -> int:
        remaining = self.remaining
        return max_upload_bytes if remaining is None else min(max_upload_bytes, remaining)

    async def receiving(self, upload: Awaitable[T], max_upload_bytes: int) -> T:
        """Await the upload; a spool overflow caused by the quota becomes QuotaExceeded."""
        try:
            return await upload
        except PayloadTooLarge as exc:
            quota_binds = self.spool_limit(max_upload_bytes) < max_upload_bytes
            if quota_binds and exc.code == "upload_too_large":
                raise self._exceeded(None) from exc
            raise

    def _exceeded(self, incoming: int | None) -> QuotaExceeded:
        assert self.key_id is not None and self.limit is not None
        return _exceeded(self.key_id, self.limit, self.used, incoming)


def upload_quota(db: Database, principal: Principal) -> UploadQuota:
    if principal.key_id is None or principal.quota_bytes is None:
        return UploadQuota(principal.key_id, None, 0)
    with db.reading() as session:
        used = used_bytes(session, principal.key_id)
    return UploadQuota(principal.key_id, principal.quota_bytes, used)
