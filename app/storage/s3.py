"""Blobs in S3-compatible object storage: `s3://bucket/prefix` holds `prefix/ab/<sha256>`.

Endpoint, credentials and region come from the usual AWS variables (AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION or AWS_DEFAULT_REGION).
Uploads go through boto3's managed transfer (multipart beyond one part); readers that need a
file get one from the bounded local `BlobCache`, downloads stream straight from the bucket.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from app import faults
from app.errors import NotFound, ServiceUnavailable
from app.storage.base import SHA256, BlobStorage, check_digest
from app.storage.cache import BlobCache

PART_BYTES = 64 << 20
ORPHAN_GRACE_SECONDS = 3600.0
READ_CHUNK_BYTES = 1 << 20
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class MissingBucket(RuntimeError):
    pass


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return parsed.netloc, parsed.path.strip("/")


def s3_client() -> Any:
    import boto3
    from botocore.config import Config

    env = os.environ
    return boto3.client(
        "s3",
        endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=10),
    )


@contextlib.contextmanager
def reachable(bucket: str) -> Iterator[None]:
    """An object store that cannot be reached answers 503, not an internal error."""
    from botocore.exceptions import ConnectionError as Unreachable
    from botocore.exceptions import HTTPClientError

    try:
        yield
    except (Unreachable, HTTPClientError) as exc:
        raise ServiceUnavailable(
            f"the object store holding bucket {bucket!r} is unreachable"
        ) from exc


class S3BlobStore(BlobStorage):
    def __init__(
        self,
        root: Path,
        url: str,
        cache: BlobCache,
        *,
        part_bytes: int = PART_BYTES,
        orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS,
    ) -> None:
        super().__init__(root, orphan_grace_seconds=orphan_grace_seconds)
        self.bucket, self.prefix = parse_s3_url(url)
        self.cache = cache
        self.part_bytes = part_bytes
        self.client = s3_client()

    def key(self, sha256: str) -> str:
        name = f"{check_digest(sha256)[:2]}/{sha256}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def prepare(self) -> None:
        """Local scratch and cache directories; refuses to start without the bucket."""
        super().prepare()
        self.cache.root.mkdir(parents=True, exist_ok=True)
        try:
            with reachable(self.bucket):
                self.client.head_bucket(Bucket=self.bucket)
        except self.client.exceptions.ClientError as exc:
            if _is_missing(exc):
                raise MissingBucket(f"bucket {self.bucket!r} does not exist; create it") from exc
            raise

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def size(self, sha256: str) -> int:
        head = self._head(sha256)
        if head is None:
            raise NotFound(f"blob {sha256} is missing from the store")
        return int(head["ContentLength"])

    def put(self, src: Path, sha256: str) -> bool:
        try:
            if self.exists(sha256):
                return False
            faults.rendezvous("blob", self.root)
            with reachable(self.bucket):
                self.client.upload_file(
                    str(src), self.bucket, self.key(sha256), Config=self._transfer_config()
                )
            return True
        finally:
            src.unlink(missing_ok=True)

    def delete(self, sha256: str) -> None:
        with reachable(self.bucket):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))
        self.cache.path(sha256).unlink(missing_ok=True)

    def iter_digests(self) -> Iterator[str]:
        return (digest for digest, _ in self._listing())

    def sweepable_digests(self) -> Iterator[str]:
        """Only objects older than the grace period: the bucket is shared, and an unreferenced
        young object may be an upload another replica has stored but not yet committed."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.orphan_grace_seconds)
        return (digest for digest, modified in self._listing() if modified < cutoff)

    def _listing(self) -> Iterator[tuple[str, datetime]]:
        paginator = self.client.get_paginator("list_objects_v2")
        start = f"{self.prefix}/" if self.prefix else ""
        with reachable(self.bucket):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    name = item["Key"].rsplit("/", 1)[-1]
                    if SHA256.match(name) and item["Key"] == self.key(name):
                        yield name, item["LastModified"]

    def local_path(self, sha256: str) -> Path:
        return self.cache.fetch(sha256, self.read)

    def served_path(self, sha256: str) -> Path | None:
        return None

    def read(self, sha256: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        request = {"Bucket": self.bucket, "Key": self.key(sha256)}
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        with reachable(self.bucket):
            try:
                body = self.client.get_object(**request)["Body"]
            except self.client.exceptions.ClientError as exc:
                if _is_missing(exc):
                    raise NotFound(f"blob {sha256} is missing from the store") from exc
                raise
            try:
                yield from body.iter_chunks(READ_CHUNK_BYTES)
            finally:
                body.close()

    def _transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        part = self.part_bytes
        return TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4)

    def _head(self, sha256: str) -> dict[str, Any] | None:
        try:
            with reachable(self.bucket):
                head: dict[str, Any] = self.client.head_object(
                    Bucket=self.bucket, Key=self.key(sha256)
                )
        except self.client.exceptions.ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return head


def _is_missing(exc: Any) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING
