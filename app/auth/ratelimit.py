"""Per-key token buckets, in memory: `per_minute` requests, refilled continuously."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from app.auth.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        if per_minute < 1:
            raise ValueError("CKPT_RATE_LIMIT_PER_MINUTE must be at least 1")
        self.capacity = float(per_minute)
        self.refill_per_second = per_minute / 60.0
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> None:
        """Spend one token of this key's bucket, or raise RateLimited with the wait."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key_id, _Bucket(self.capacity, now))
            elapsed = now - bucket.updated
            bucket.tokens = min(self.capacity, bucket.tokens + elapsed * self.refill_per_second)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / self.refill_per_second
        raise RateLimited(
            f"API key {key_id} exceeded {int(self.capacity)} requests per minute; "
            f"retry in {wait:.1f} s",
            retry_after_seconds=wait,
        )
