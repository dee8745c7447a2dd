"""Two uploads of different files into one server transfer their blobs at the same time: no
process-wide lock queues one transfer behind another (local disk and S3 alike).

The rendezvous hook of app/faults.py makes the first two transfers wait for each other; had
one upload to wait for the other's transfer to end, both would give up waiting, alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from app import faults
from tests.crash.payloads import safetensors_bytes
from tests.crash.serve_process import ServeProcess
from tests.postgres.test_two_api_processes import at_once
from tests.storage.conftest import new_bucket


def storage_env(backend: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if backend == "local":
        return {}
    s3: Any = request.getfixturevalue("s3")  # starts moto and points the AWS variables at it
    return {"CKPT_STORAGE_URL": f"s3://{new_bucket(s3)}/blobs"}


def post(server: ServeProcess, data: bytes, name: str) -> httpx.Response:
    with server.client() as client:
        headers = {"Content-Type": "application/octet-stream"}
        return client.post("/v1/checkpoints", params={"name": name}, content=data, headers=headers)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_two_uploads_transfer_at_once(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    env = storage_env(backend, request)
    data_dir = tmp_path / "data"
    with ServeProcess(data_dir, **{faults.RENDEZVOUS_ENV: "blob:2"}, **env) as server:
        payloads = [safetensors_bytes(seed=seed, numel=1 << 16) for seed in (1, 2)]
        responses = at_once(
            [
                lambda data=data, i=i: post(server, data, f"apart-{i}")
                for i, data in enumerate(payloads)
            ]
        )
    assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
    markers = sorted(data_dir.glob("rendezvous-blob-*"))
    assert [marker.read_text() for marker in markers] == ["met", "met"]
