"""When auth applies: open on loopback until a key exists, CKPT_AUTH=off|required, and a real
`ckpt serve` that refuses to listen beyond loopback without keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.auth.service import OPEN_RECHECK_SECONDS, startup_problem
from app.config import Settings
from app.db.engine import Database
from tests.auth.helpers import bearer, create_key, migrated_data_dir, run_cli
from tests.live_server import LiveServer, free_port


@pytest.fixture
def live(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    overrides = getattr(request, "param", {})
    with LiveServer(tmp_path / "data", **overrides) as server:
        yield server


def test_loopback_without_keys_is_open_until_the_first_key(live: LiveServer) -> None:
    with live.client() as client:
        assert client.get("/v1/checkpoints").status_code == 200
        # Open mode ignores whatever token a client sends (OpenAI clients always send one).
        assert client.get("/v1/models", headers=bearer("unused")).status_code == 200
        created = client.post("/v1/keys", json={"name": "first", "scope": "admin"})
        assert created.status_code == 201, created.text
        assert client.get("/v1/checkpoints").status_code == 401
        key = created.json()["key"]
        assert client.get("/v1/checkpoints", headers=bearer(key)).status_code == 200
        # Revoking every key does not reopen the server.
        assert client.delete(f"/v1/keys/{created.json()['id']}", headers=bearer(key)).is_success
        assert client.get("/v1/checkpoints").status_code == 401


def test_a_key_made_by_the_cli_closes_a_running_open_server(live: LiveServer) -> None:
    with live.client() as client:
        assert client.get("/v1/checkpoints").status_code == 200
        create_key(live.settings, "from-another-process", "read")
        deadline = time.monotonic() + OPEN_RECHECK_SECONDS + 2
        while client.get("/v1/checkpoints").status_code == 200:
            assert time.monotonic() < deadline, "the server stayed open after a key was created"
            time.sleep(0.05)
        assert client.get("/v1/checkpoints").status_code == 401


@pytest.mark.parametrize("live", [{"auth": "off"}], indirect=True)
def test_auth_off_serves_everyone_even_with_keys(live: LiveServer) -> None:
    create_key(live.settings, "ignored", "read")
    with live.client() as client:
        assert client.get("/v1/checkpoints").status_code == 200
        assert client.get("/v1/keys", headers=bearer("ckpt_wrong_key")).status_code == 200


@pytest.mark.parametrize("live", [{"auth": "required"}], indirect=True)
def test_auth_required_without_keys_admits_nobody(live: LiveServer) -> None:
    with live.client() as client:
        assert client.get("/v1/checkpoints").status_code == 401
        assert client.get("/health").status_code == 200
        key = create_key(live.settings, "reader", "read").key
        assert client.get("/v1/checkpoints", headers=bearer(key)).status_code == 200


@pytest.mark.parametrize("live", [{"host": "0.0.0.0"}], indirect=True)
def test_a_server_configured_for_all_interfaces_requires_keys(live: LiveServer) -> None:
    with live.client() as client:
        assert client.get("/v1/checkpoints").status_code == 401


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_data_dir(tmp_path_factory.mktemp("serve-refusal") / "data")


@pytest.mark.parametrize(
    ("args", "env"),
    [(["--host", "0.0.0.0"], {}), ([], {"CKPT_HOST": "::"})],
)
def test_serve_refuses_to_listen_beyond_loopback_without_keys(
    migrated: Path, args: list[str], env: dict[str, str]
) -> None:
    result = run_cli(migrated, "serve", "--port", str(free_port()), *args, **env)
    assert result.returncode == 1
    assert "refusing to listen on" in result.stderr
    assert "ckpt keys create --name admin --scope admin" in result.stderr


def test_only_auto_mode_refuses_to_start(migrated: Path) -> None:
    # The real `ckpt serve` on 0.0.0.0 with a key is tests/auth/test_logs.py's server.
    db = Database(Settings(data_dir=migrated).resolved_database_url)
    try:
        for auth in ("off", "required"):
            assert startup_problem(Settings(data_dir=migrated, auth=auth), db, "0.0.0.0") is None
        for host in ("127.0.0.1", "::1", "localhost", "[::1]"):
            assert startup_problem(Settings(data_dir=migrated), db, host) is None
        assert startup_problem(Settings(data_dir=migrated), db, "") is not None
    finally:
        db.dispose()
