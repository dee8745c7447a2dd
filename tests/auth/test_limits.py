"""Per-key rate limits and storage quotas on real servers: one key stopped, the others not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.auth.errors import QuotaExceeded
from app.auth.quota import enforce_quota
from app.db.engine import Database
from app.db.models import Checkpoint
from tests.auth.helpers import bearer, create_key
from tests.conftest import TinyModel, blob_count, leftover_temp_files
from tests.live_server import LiveServer


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("rate") / "data"
    with LiveServer(data, rate_limit_per_minute=3) as live:
        yield live


def test_rate_limit_stops_one_key_and_not_another(limited: LiveServer) -> None:
    busy = create_key(limited.settings, "busy", "read").key
    calm = create_key(limited.settings, "calm", "read").key
    with limited.client() as client:
        for _ in range(3):
            assert client.get("/v1/checkpoints", headers=bearer(busy)).status_code == 200
        refused = client.get("/v1/checkpoints", headers=bearer(busy))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        # 3 per minute refill one request every 20 s.
        assert 15 <= int(refused.headers["retry-after"]) <= 20
        assert client.get("/v1/checkpoints", headers=bearer(calm)).status_code == 200


def test_rate_limit_speaks_the_openai_and_tgi_dialects(limited: LiveServer) -> None:
    key = create_key(limited.settings, "dialects", "read").key
    with limited.client() as client:
        for _ in range(3):
            client.get("/v1/checkpoints", headers=bearer(key))
        openai = client.get("/v1/models", headers=bearer(key))
        assert openai.status_code == 429 and "retry-after" in openai.headers
        assert openai.json()["error"]["type"] == "rate_limit_exceeded"
        tgi = client.post("/generate", json={"inputs": "x"}, headers=bearer(key))
        assert tgi.status_code == 429 and "retry-after" in tgi.headers
        assert tgi.json()["error_type"] == "overloaded"


@pytest.fixture(scope="module")
def quota_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("quota") / "data"
    # The default quota (for keys created without one) is smaller than any tiny upload.
    with LiveServer(data, key_quota_bytes=1000) as live:
        yield live


@pytest.fixture(scope="module")
def quota_keys(quota_server: LiveServer, tiny: TinyModel) -> dict[str, str]:
    one_upload = tiny.zip_stored.stat().st_size + 1000
    settings = quota_server.settings
    return {
        "small": create_key(settings, "small", "write", quota_bytes=one_upload).key,
        "big": create_key(settings, "big", "write", quota_bytes=100 << 20).key,
        "default": create_key(settings, "default", "write").key,
    }


def raw(path: Path) -> dict[str, Any]:
    return {"content": path.read_bytes(), "headers": {"Content-Type": "application/octet-stream"}}


def chunked(path: Path) -> dict[str, Any]:
    data = path.read_bytes()

    def body() -> Iterator[bytes]:
        for start in range(0, len(data), 1 << 16):
            yield data[start : start + (1 << 16)]

    return {"content": body(), "headers": {"Content-Type": "application/octet-stream"}}


def multipart(path: Path) -> dict[str, Any]:
    return {"files": {"file": (path.name, path.read_bytes())}, "headers": {}}


def upload(client: httpx.Client, key: str, name: str, body: dict[str, Any]) -> httpx.Response:
    headers = {**body.pop("headers"), **bearer(key)}
    return client.post("/v1/checkpoints", params={"name": name}, headers=headers, **body)


def test_uploads_within_the_quota_are_stored(
    quota_server: LiveServer, quota_keys: dict[str, str], tiny: TinyModel
) -> None:
    with quota_server.client() as client:
        first = upload(client, quota_keys["small"], "mine", raw(tiny.zip_stored))
        assert first.status_code == 201, first.text
        # The size is checked before the bytes are hashed: even an identical retry needs room.
        again = upload(client, quota_keys["small"], "mine", raw(tiny.zip_stored))
        assert again.status_code == 413, again.text


@pytest.mark.parametrize("send", [raw, chunked, multipart])
def test_upload_beyond_the_quota_is_413_and_leaves_nothing(
    quota_server: LiveServer, quota_keys: dict[str, str], tiny: TinyModel, send: Any
) -> None:
    with quota_server.client() as client:
        reader = quota_keys["small"]
        before = client.get("/v1/checkpoints", headers=bearer(reader)).json()["items"]
        blobs = blob_count(quota_server.data_dir)
        response = upload(client, quota_keys["small"], "more", send(tiny.zip_deflated))
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert "storage quota of" in error["message"]
        after = client.get("/v1/checkpoints", headers=bearer(reader)).json()["items"]
        assert [c["id"] for c in after] == [c["id"] for c in before]
        assert blob_count(quota_server.data_dir) == blobs
        assert leftover_temp_files(quota_server.data_dir) == []


def test_default_quota_applies_to_keys_without_their_own(
    quota_server: LiveServer, quota_keys: dict[str, str], tiny: TinyModel
) -> None:
    with quota_server.client() as client:
        response = upload(client, quota_keys["default"], "dflt", chunked(tiny.zip_deflated))
        assert response.status_code == 413
        assert "quota of 1000 bytes" in response.json()["error"]["message"]


def test_other_keys_still_upload(
    quota_server: LiveServer, quota_keys: dict[str, str], tiny: TinyModel
) -> None:
    with quota_server.client() as client:
        response = upload(client, quota_keys["big"], "theirs", raw(tiny.zip_deflated))
        assert response.status_code == 201, response.text
        smalls = upload(client, quota_keys["small"], "still-full", raw(tiny.safetensors))
        assert smalls.status_code == 413


def test_uploads_record_their_key(quota_server: LiveServer, quota_keys: dict[str, str]) -> None:
    db = Database(quota_server.settings.resolved_database_url)
    query = select(Checkpoint.name, Checkpoint.uploaded_by)
    try:
        with db.reading() as session:
            rows = {name: key for name, key in session.execute(query)}
    finally:
        db.dispose()
    small_id = quota_keys["small"].split("_")[1]
    big_id = quota_keys["big"].split("_")[1]
    assert rows == {"mine": small_id, "theirs": big_id}


def test_the_insert_transaction_checks_the_quota_again(
    quota_server: LiveServer, quota_keys: dict[str, str], tiny: TinyModel
) -> None:
    """Two concurrent uploads of one key both pass the early checks; the commit stops the second."""
    small_id = quota_keys["small"].split("_")[1]
    limit = tiny.zip_stored.stat().st_size + 1000
    db = Database(quota_server.settings.resolved_database_url)
    try:
        with db.transaction() as session:
            enforce_quota(session, small_id, limit, 1000)
            with pytest.raises(QuotaExceeded, match="needs 1001 more bytes"):
                enforce_quota(session, small_id, limit, 1001)
    finally:
        db.dispose()
