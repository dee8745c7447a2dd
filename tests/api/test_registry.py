"""Versions, aliases, listing, deletion and garbage collection, health."""

from __future__ import annotations

import httpx
import pytest
from safetensors.torch import save_file

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel, blob_count
from tests.live_server import LiveServer
from tests.models import build_gpt2


@pytest.fixture(scope="module")
def three_versions(
    client: httpx.Client, tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> list[str]:
    folder = tmp_path_factory.mktemp("versions")
    ids = []
    for seed in range(3):
        path = folder / f"v{seed}.safetensors"
        model = build_gpt2(len(tiny.tokenizer), seed=seed + 10)
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
            path,
        )
        response = upload_raw(client, path, "versioned")
        assert response.status_code == 201, response.text
        assert response.json()["version"] == seed + 1
        ids.append(response.json()["id"])
    return ids


def test_latest_follows_newest_version(client: httpx.Client, three_versions: list[str]) -> None:
    assert client.get("/v1/checkpoints/versioned").json()["id"] == three_versions[2]
    assert client.get("/v1/checkpoints/versioned:latest").json()["id"] == three_versions[2]
    assert client.get("/v1/checkpoints/versioned@1").json()["id"] == three_versions[0]
    assert client.get(f"/v1/checkpoints/{three_versions[1]}").json()["version"] == 2
    first = client.get("/v1/checkpoints/versioned@1").json()
    assert first["aliases"] == []


def test_user_alias_moves_between_versions(client: httpx.Client, three_versions: list[str]) -> None:
    put = client.put("/v1/checkpoints/versioned@1/aliases/prod")
    assert put.status_code == 200
    assert "prod" in put.json()["aliases"]
    assert client.get("/v1/checkpoints/versioned:prod").json()["id"] == three_versions[0]
    client.put("/v1/checkpoints/versioned@2/aliases/prod")
    assert client.get("/v1/checkpoints/versioned:prod").json()["id"] == three_versions[1]
    assert "prod" not in client.get("/v1/checkpoints/versioned@1").json()["aliases"]
    deleted = client.delete("/v1/checkpoints/versioned@2/aliases/prod")
    assert deleted.status_code == 200
    assert client.get("/v1/checkpoints/versioned:prod").status_code == 404


def test_latest_alias_is_reserved(client: httpx.Client, three_versions: list[str]) -> None:
    response = client.put("/v1/checkpoints/versioned@1/aliases/latest")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "reserved_alias"


@pytest.mark.parametrize(
    ("ref", "status", "code"),
    [
        ("versioned@0", 400, "invalid_ref"),
        ("versioned@x", 400, "invalid_ref"),
        ("bad name", 400, "invalid_name"),
        ("versioned:no-such-alias", 404, "checkpoint_not_found"),
        ("versioned@99", 404, "checkpoint_not_found"),
        ("nobody", 404, "checkpoint_not_found"),
    ],
)
def test_bad_refs_get_clear_errors(
    client: httpx.Client, three_versions: list[str], ref: str, status: int, code: str
) -> None:
    response = client.get(f"/v1/checkpoints/{ref}")
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


def test_list_filters_and_paginates_newest_first(
    client: httpx.Client, three_versions: list[str]
) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"name": "versioned", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/checkpoints", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(three_versions))
    latest = client.get("/v1/checkpoints", params={"alias": "latest", "name": "versioned"}).json()
    assert [item["id"] for item in latest["items"]] == [three_versions[2]]


def test_delete_moves_latest_and_collects_unreferenced_blobs(
    client: httpx.Client, server: LiveServer, tiny: TinyModel
) -> None:
    first = upload_raw(client, tiny.safetensors, "shared-a").json()
    upload_raw(client, tiny.safetensors, "shared-b")
    blob = server.data_dir / "blobs" / first["sha256"][:2] / first["sha256"]
    assert blob.is_file()
    assert client.delete("/v1/checkpoints/shared-a").status_code == 204
    assert client.get("/v1/checkpoints/shared-a").status_code == 404
    assert blob.is_file(), "still referenced by shared-b"
    before = blob_count(server.data_dir)
    assert client.delete("/v1/checkpoints/shared-b").status_code == 204
    assert not blob.exists()
    assert blob_count(server.data_dir) < before


def test_deleting_latest_points_latest_at_previous_version(
    client: httpx.Client, three_versions: list[str]
) -> None:
    assert client.delete(f"/v1/checkpoints/{three_versions[2]}").status_code == 204
    assert client.get("/v1/checkpoints/versioned").json()["id"] == three_versions[1]


def test_health(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_openapi_declares_upload_and_errors(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    upload = spec["paths"]["/v1/checkpoints"]["post"]
    assert set(upload["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/octet-stream",
    }
    assert "422" in upload["responses"]
