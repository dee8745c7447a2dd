"""API keys in the database: created with a random secret shown once, stored as an HMAC.

A key reads `ckpt_<id>_<secret>`: the id is public (listings, logs, `uploaded_by`), the secret is
32 random bytes. The row keeps HMAC-SHA256(pepper, key): a leaked database does not yield keys.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable

from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError

from app.auth.scopes import Scope
from app.db.engine import Database
from app.db.models import ApiKey, utcnow
from app.errors import InvalidInput, NotFound
from app.services.views import UtcDateTime

log = logging.getLogger(__name__)

KEY_PREFIX = "ckpt_"
MAX_KEY_CHARS = 256
MAX_NAME_CHARS = 128
MAX_QUOTA_BYTES = (1 << 63) - 1  # a BIGINT
# last_used_at is written at most this often per key, not on every request.
TOUCH_INTERVAL_SECONDS = 60.0


class KeyView(BaseModel):
    """A key as listed: never its secret."""

    id: str
    name: str
    scope: Scope
    quota_bytes: int | None
    created_at: UtcDateTime
    last_used_at: UtcDateTime | None
    revoked_at: UtcDateTime | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def of(cls, row: ApiKey) -> KeyView:
        return cls.model_validate(row, from_attributes=True)


class CreatedKey(KeyView):
    key: str = Field(description="the secret: shown in this response only")


class KeyStore:
    def __init__(self, db: Database, pepper: Callable[[], bytes]) -> None:
        self.db = db
        self._pepper = pepper
        self._touched: dict[str, float] = {}
        self.created_here = False
        self._touch_lock = threading.Lock()

    def digest(self, key: str) -> str:
        return hmac.new(self._pepper(), key.encode(), hashlib.sha256).hexdigest()

    def create(self, name: str, scope: Scope, quota_bytes: int | None = None) -> CreatedKey:
        _check_key_name(name)
        if quota_bytes is not None and not 0 <= quota_bytes <= MAX_QUOTA_BYTES:
            raise InvalidInput(
                f"quota_bytes must be between 0 and {MAX_QUOTA_BYTES}", code="invalid_quota"
            )
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        row = ApiKey(
            id=key_id, name=name, scope=scope, key_hash=self.digest(key), quota_bytes=quota_bytes
        )
        with self.db.transaction() as session:
            session.add(row)
            session.flush()
            view = KeyView.of(row)
        self.created_here = True
        return CreatedKey(**view.model_dump(), key=key)

    def list(self) -> list[KeyView]:
        with self.db.reading() as session:
            rows = session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id))
            return [KeyView.of(row) for row in rows]

    def revoke(self, key_id: str) -> KeyView:
        with self.db.transaction() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", code="key_not_found")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            session.flush()
            return KeyView.of(row)

    def find(self, key: str) -> KeyView | None:
        """The key this secret belongs to (revoked or not), or None."""
        if not key.startswith(KEY_PREFIX) or len(key) > MAX_KEY_CHARS:
            return None
        digest = self.digest(key)
        with self.db.reading() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
            return KeyView.of(row) if row is not None else None

    def any_exist(self) -> bool:
        return any_key_exists(self.db)

    def touch(self, key_id: str) -> None:
        now = time.monotonic()
        with self._touch_lock:
            if now - self._touched.get(key_id, -TOUCH_INTERVAL_SECONDS) < TOUCH_INTERVAL_SECONDS:
                return
            self._touched[key_id] = now
        try:
            with self.db.transaction() as session:
                stamp = update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow())
                session.execute(stamp)
        except SQLAlchemyError as exc:
            # Bookkeeping only: a busy database must not fail the request it rides on.
            log.warning("could not record the use of API key %s: %s", key_id, type(exc).__name__)


def any_key_exists(db: Database) -> bool:
    """Whether a key was ever created (revoked ones count: revoking never reopens a server)."""
    with db.reading() as session:
        return session.scalar(select(ApiKey.id).limit(1)) is not None


def _check_key_name(name: str) -> None:
    if not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise InvalidInput(
            f"a key name is 1 to {MAX_NAME_CHARS} printable characters", code="invalid_key_name"
        )
