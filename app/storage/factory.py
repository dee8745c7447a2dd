"""The blob store that `CKPT_STORAGE_URL` names: `file://` (default: the data dir) or `s3://`."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from app.config import Settings
from app.storage.base import BlobStorage
from app.storage.blobs import BlobStore


def open_blob_store(settings: Settings) -> BlobStorage:
    url = settings.storage_url or ""
    scheme = urlparse(url).scheme
    if scheme == "s3":
        from app.storage.cache import BlobCache
        from app.storage.s3 import ORPHAN_GRACE_SECONDS, S3BlobStore

        cache = BlobCache(settings.data_dir / "cache" / "blobs", settings.blob_cache_bytes)
        grace = settings.orphan_grace_seconds
        grace = ORPHAN_GRACE_SECONDS if grace is None else grace
        return S3BlobStore(settings.data_dir, url, cache, orphan_grace_seconds=grace)
    grace = settings.orphan_grace_seconds or 0.0
    if scheme == "file":
        return BlobStore(Path(unquote(urlparse(url).path)), orphan_grace_seconds=grace)
    if not url:
        return BlobStore(settings.data_dir, orphan_grace_seconds=grace)
    raise ValueError(f"CKPT_STORAGE_URL must be file://... or s3://bucket/prefix, not {url!r}")
