"""A real S3-protocol server (moto) on loopback for the storage tests, and the AWS variables
pointing at it (inherited by worker subprocesses)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.live_server import free_port

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "registry-test",
    "AWS_SECRET_ACCESS_KEY": "registry-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in (AWS_ENV | {"AWS_ENDPOINT_URL": endpoint}).items():
            env.setenv(name, value)
        env.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        env.delenv("AWS_PROFILE", raising=False)
        yield endpoint
    moto.stop()


@pytest.fixture(scope="session")
def s3(s3_endpoint: str) -> Any:
    """A boto3 client on the test server, for looking at (and tampering with) the bucket."""
    from app.storage.s3 import s3_client

    return s3_client()


def new_bucket(s3: Any) -> str:
    name = f"registry-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def object_keys(s3: Any, bucket: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))
