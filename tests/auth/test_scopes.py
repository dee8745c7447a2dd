"""Bearer keys and scopes on every router of a real server, in each router's error dialect."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.auth.scopes import Scope
from tests.auth.helpers import bearer, create_key
from tests.conftest import TinyModel, leftover_temp_files
from tests.live_server import LiveServer

SERVER_SETTINGS = {"device": "cpu"}


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    scope: str
    ok: int
    dialect: str  # registry | openai | tgi | html
    body: Any = None

    def send(self, client: httpx.Client, key: str | None, tiny: TinyModel) -> httpx.Response:
        headers = bearer(key) if key else {}
        if self.body == "upload":
            data = tiny.zip_stored.read_bytes()
            headers["Content-Type"] = "application/octet-stream"
            return client.request(self.method, self.path, content=data, headers=headers)
        return client.request(self.method, self.path, json=self.body, headers=headers)


GENERATE = {"inputs": "the quick", "parameters": {"max_new_tokens": 2}}
COMPLETE = {"model": "tiny", "prompt": "the quick", "max_tokens": 2}
ENDPOINTS = [
    Endpoint("GET", "/v1/checkpoints", "read", 200, "registry"),
    Endpoint("GET", "/v1/checkpoints/tiny/download", "read", 200, "registry"),
    Endpoint("POST", "/v1/checkpoints?name=uploaded", "write", 201, "registry", "upload"),
    Endpoint("PUT", "/v1/checkpoints/tiny/aliases/prod", "write", 200, "registry"),
    Endpoint("DELETE", "/v1/checkpoints/tiny/aliases/prod", "write", 200, "registry"),
    Endpoint("DELETE", "/v1/checkpoints/doomed", "admin", 204, "registry"),
    Endpoint("POST", "/v1/checkpoints/tiny/verifications", "write", 202, "registry", {}),
    Endpoint("GET", "/v1/checkpoints/tiny/verifications", "read", 200, "registry"),
    Endpoint("GET", "/v1/models", "read", 200, "openai"),
    Endpoint("POST", "/v1/completions", "read", 200, "openai", COMPLETE),
    Endpoint("GET", "/models/tiny/info", "read", 200, "tgi"),
    Endpoint("POST", "/models/tiny/generate", "read", 200, "tgi", GENERATE),
    Endpoint("POST", "/generate", "read", 200, "tgi", GENERATE),
    Endpoint("GET", "/v1/keys", "admin", 200, "registry"),
    Endpoint("POST", "/v1/keys", "admin", 201, "registry", {"name": "n", "scope": "read"}),
    Endpoint("GET", "/ui", "read", 200, "html"),
]
BELOW = {"write": ["read"], "admin": ["read", "write"]}


def _first_check_failed(endpoint: Endpoint, scope: str) -> str:
    """The scope the 403 names: the router's method rule runs before a route's stricter one."""
    method_rule = endpoint.path.startswith("/v1/checkpoints") and endpoint.method != "GET"
    return "write" if method_rule and scope == "read" else endpoint.scope


DENIED = [(e, s, _first_check_failed(e, s)) for e in ENDPOINTS for s in BELOW.get(e.scope, [])]


def _id(endpoint: Endpoint) -> str:
    return f"{endpoint.method} {endpoint.path.split('?')[0]}"


@pytest.fixture(scope="module")
def keys(server: LiveServer) -> dict[str, str]:
    scopes: list[Scope] = ["read", "write", "admin"]
    return {scope: create_key(server.settings, scope, scope).key for scope in scopes}


@pytest.fixture(scope="module", autouse=True)
def checkpoints(client: httpx.Client, keys: dict[str, str], tiny: TinyModel) -> Iterator[None]:
    for name in ("tiny", "doomed"):
        response = client.post(
            f"/v1/checkpoints?name={name}",
            content=tiny.zip_stored.read_bytes(),
            headers={**bearer(keys["write"]), "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 201, response.text
    yield


def assert_error(response: httpx.Response, status: int, code: str, dialect: str) -> str:
    assert response.status_code == status, response.text
    if dialect == "html":
        assert response.headers["content-type"].startswith("text/html")
        return response.text
    body = response.json()
    if dialect == "tgi":
        assert body["error_type"] == code
        message: str = body["error"]
        return message
    assert body["error"]["code"] == code
    if dialect == "openai":
        assert body["error"]["type"] == "invalid_request_error"
        assert set(body["error"]) == {"message", "type", "param", "code"}
    else:
        assert set(body["error"]) == {"code", "message"}
    message = body["error"]["message"]
    return message


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_no_key_is_401_with_a_bearer_challenge(
    client: httpx.Client, tiny: TinyModel, endpoint: Endpoint
) -> None:
    response = endpoint.send(client, None, tiny)
    message = assert_error(response, 401, "unauthorized", endpoint.dialect)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in message


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_wrong_key_is_401(client: httpx.Client, tiny: TinyModel, endpoint: Endpoint) -> None:
    wrong = "ckpt_000000000000_" + "x" * 43
    response = endpoint.send(client, wrong, tiny)
    message = assert_error(response, 401, "unauthorized", endpoint.dialect)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "not valid" in message and wrong not in message


@pytest.mark.parametrize(
    ("endpoint", "scope", "named"), DENIED, ids=lambda v: v if isinstance(v, str) else _id(v)
)
def test_key_without_the_scope_is_403(
    client: httpx.Client,
    keys: dict[str, str],
    tiny: TinyModel,
    endpoint: Endpoint,
    scope: str,
    named: str,
) -> None:
    response = endpoint.send(client, keys[scope], tiny)
    message = assert_error(response, 403, "forbidden", endpoint.dialect)
    assert f"has the '{scope}' scope" in message
    assert f"{endpoint.method} {endpoint.path.split('?')[0]} needs '{named}'" in message


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_key_with_the_scope_is_served(
    client: httpx.Client, keys: dict[str, str], tiny: TinyModel, endpoint: Endpoint
) -> None:
    response = endpoint.send(client, keys[endpoint.scope], tiny)
    assert response.status_code == endpoint.ok, response.text


def test_the_ui_key_cookie_opens_safe_requests_only(
    client: httpx.Client, keys: dict[str, str]
) -> None:
    """The web UI's cookie lets a browser follow links (pages, downloads); it never authorises a
    change, whatever the key's scope."""
    cookie = {"Cookie": f"ckpt_api_key={keys['admin']}"}
    assert client.get("/ui", headers=cookie).status_code == 200
    assert client.get("/v1/checkpoints/tiny/download", headers=cookie).status_code == 200
    assert client.get("/ui", headers={"Cookie": "ckpt_api_key=wrong"}).status_code == 401
    response = client.put("/v1/checkpoints/tiny/aliases/cookie", headers=cookie)
    assert_error(response, 401, "unauthorized", "registry")


def test_revoked_key_is_401(client: httpx.Client, server: LiveServer) -> None:
    key = create_key(server.settings, "soon-revoked", "admin")
    assert client.get("/v1/keys", headers=bearer(key.key)).status_code == 200
    revoked = client.delete(f"/v1/keys/{key.id}", headers=bearer(key.key))
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revoked_at"] is not None
    response = client.get("/v1/checkpoints", headers=bearer(key.key))
    assert_error(response, 401, "unauthorized", "registry")


def test_unauthorised_upload_leaves_nothing(
    client: httpx.Client, server: LiveServer, keys: dict[str, str], tiny: TinyModel
) -> None:
    before = client.get("/v1/checkpoints", headers=bearer(keys["read"])).json()["items"]
    upload = Endpoint("POST", "/v1/checkpoints?name=sneaky", "write", 0, "registry", "upload")
    for key, status in ((None, 401), (keys["read"], 403)):
        assert upload.send(client, key, tiny).status_code == status
    after = client.get("/v1/checkpoints", headers=bearer(keys["read"])).json()["items"]
    assert [c["id"] for c in after] == [c["id"] for c in before]
    assert leftover_temp_files(server.data_dir) == []


def test_keys_over_http(client: httpx.Client, keys: dict[str, str]) -> None:
    admin = bearer(keys["admin"])
    created = client.post("/v1/keys", json={"name": "svc", "scope": "write"}, headers=admin)
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert client.get("/v1/checkpoints", headers=bearer(key)).status_code == 200
    listed = client.get("/v1/keys", headers=admin).json()["items"]
    assert key not in str(listed)
    (svc,) = [item for item in listed if item["id"] == created.json()["id"]]
    assert svc["scope"] == "write" and svc["last_used_at"] is not None
    bad = client.post("/v1/keys", json={"name": "x", "scope": "root"}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "validation_error"
    missing = client.delete("/v1/keys/nope", headers=admin)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "key_not_found"


def test_health_and_docs_stay_open(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["APIKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["APIKey"]["description"],
    }
    assert spec["paths"]["/v1/checkpoints"]["post"]["security"] == [{"APIKey": []}]
    assert "security" not in spec["paths"]["/health"]["get"]
