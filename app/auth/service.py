"""Who is calling: the bearer key checked against the store, the auth mode and the rate limit."""

from __future__ import annotations

import functools
import ipaddress
import time
from dataclasses import dataclass

from app.auth.errors import Forbidden, Unauthorized
from app.auth.keys import KeyStore, any_key_exists
from app.auth.pepper import load_pepper
from app.auth.ratelimit import RateLimiter
from app.auth.scopes import Scope, allows
from app.config import Settings
from app.db.engine import Database

# An open server (loopback, no key yet) looks for a key made by `ckpt keys create` this often.
OPEN_RECHECK_SECONDS = 1.0
CREATE_FIRST_KEY = "ckpt keys create --name admin --scope admin"


@dataclass(frozen=True)
class Principal:
    """The caller: a key (its id, scope and storage quota), or anyone when auth is off."""

    key_id: str | None
    scope: Scope
    quota_bytes: int | None


ANYONE = Principal(key_id=None, scope="admin", quota_bytes=None)


class Authenticator:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyStore(db, functools.cache(lambda: load_pepper(settings)))
        per_minute = settings.rate_limit_per_minute
        self.limiter = RateLimiter(per_minute) if per_minute else None
        self._keys_seen = False
        self._no_keys_at = -OPEN_RECHECK_SECONDS

    def known_open(self) -> bool:
        """True when no key is needed, known without touching the database (on the event loop)."""
        mode = self.settings.auth
        if mode != "auto":
            return mode == "off"
        if not is_loopback(self.settings.host) or self._keys_seen or self.keys.created_here:
            return False
        return time.monotonic() - self._no_keys_at < OPEN_RECHECK_SECONDS

    def required(self) -> bool:
        mode = self.settings.auth
        if mode != "auto":
            return mode == "required"
        return not is_loopback(self.settings.host) or self._keys_exist()

    def _keys_exist(self) -> bool:
        # Keys are revoked, never deleted: once one exists, that stays true.
        self._keys_seen = self._keys_seen or self.keys.any_exist()
        if not self._keys_seen:
            self._no_keys_at = time.monotonic()
        return self._keys_seen

    def authenticate(self, key: str | None) -> Principal:
        if not self.required():
            return ANYONE
        if not key:
            raise Unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")
        view = self.keys.find(key)
        if view is None or view.revoked:
            raise Unauthorized("the API key is not valid or has been revoked")
        if self.limiter is not None:
            self.limiter.take(view.id)
        self.keys.touch(view.id)
        quota = view.quota_bytes if view.quota_bytes is not None else self.settings.key_quota_bytes
        return Principal(key_id=view.id, scope=view.scope, quota_bytes=quota)


def check_scope(principal: Principal, needed: Scope, action: str) -> None:
    if not allows(principal.scope, needed):
        raise Forbidden(
            f"API key {principal.key_id} has the '{principal.scope}' scope; "
            f"{action} needs '{needed}'"
        )


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_problem(settings: Settings, db: Database, host: str) -> str | None:
    """Why the server must not start on `host` (no keys while reachable from outside), or None."""
    if settings.auth != "auto" or is_loopback(host):
        return None
    if any_key_exists(db):
        return None
    return (
        f"refusing to listen on {host} with no API key: anyone who can reach the port could "
        f"upload and delete checkpoints. Create a key first: `{CREATE_FIRST_KEY}` "
        "(or bind to 127.0.0.1, or set CKPT_AUTH=off to serve without authentication)"
    )
