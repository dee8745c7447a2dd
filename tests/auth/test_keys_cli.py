"""`ckpt keys create|list|revoke` as a user runs them: real processes, a real SQLite file."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.auth.helpers import migrated_data_dir, run_cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_data_dir(tmp_path_factory.mktemp("keys-cli") / "data")


def database_dump(data_dir: Path) -> str:
    with sqlite3.connect(data_dir / "registry.sqlite3") as connection:
        return "\n".join(connection.iterdump())


def test_create_prints_the_key_once_and_stores_only_its_hmac(data_dir: Path) -> None:
    created = run_cli(data_dir, "keys", "create", "--name", "ci", "--scope", "write")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("ckpt_") and len(key) > 40
    assert key not in created.stderr
    assert "only time" in created.stderr

    pepper = (data_dir / "auth_pepper").read_bytes().strip()
    assert stat.S_IMODE((data_dir / "auth_pepper").stat().st_mode) == 0o600
    dump = database_dump(data_dir)
    secret = key.split("_", 2)[2]
    assert key not in dump and secret not in dump
    with sqlite3.connect(data_dir / "registry.sqlite3") as connection:
        (stored,) = connection.execute("SELECT key_hash FROM api_keys WHERE name = 'ci'").fetchone()
    assert stored == hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()

    listed = run_cli(data_dir, "keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert key not in listed.stdout and secret not in listed.stdout
    key_id = key.split("_")[1]
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith(key_id)]
    assert line.split()[1:3] == ["ci", "write"]


def test_json_list_and_revoke(data_dir: Path) -> None:
    created = run_cli(
        data_dir,
        "keys",
        "create",
        "--name",
        "bot",
        "--scope",
        "read",
        "--quota-bytes",
        "1000",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    document = json.loads(created.stdout)
    assert document["key"].startswith(f"ckpt_{document['id']}_")
    assert (document["scope"], document["quota_bytes"]) == ("read", 1000)
    assert document["revoked_at"] is None and document["last_used_at"] is None

    revoked = run_cli(data_dir, "keys", "revoke", document["id"], "--json")
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout)["revoked_at"] is not None

    listed = json.loads(run_cli(data_dir, "keys", "list", "--json").stdout)
    by_id = {item["id"]: item for item in listed}
    assert by_id[document["id"]]["revoked_at"] is not None
    assert all("key" not in item and "key_hash" not in item for item in listed)
    assert document["key"] not in json.dumps(listed)


def test_bad_input_is_refused_clearly(data_dir: Path) -> None:
    unknown = run_cli(data_dir, "keys", "revoke", "nosuchkey")
    assert unknown.returncode == 1
    assert "no API key with id 'nosuchkey'" in unknown.stderr
    bad_name = run_cli(data_dir, "keys", "create", "--name", "", "--scope", "read")
    assert bad_name.returncode == 2
    assert "1 to 128 printable characters" in bad_name.stderr


def test_keys_need_a_migrated_database(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "fresh", "keys", "list")
    assert result.returncode == 1
    assert "ckpt migrate" in result.stderr


def test_configured_pepper_is_used_instead_of_a_file(tmp_path: Path) -> None:
    data = migrated_data_dir(tmp_path / "data")
    created = run_cli(
        data, "keys", "create", "--name", "p", "--scope", "read", CKPT_KEY_PEPPER="s3cret-pepper"
    )
    assert created.returncode == 0, created.stderr
    assert not (data / "auth_pepper").exists()
    with sqlite3.connect(data / "registry.sqlite3") as connection:
        (stored,) = connection.execute("SELECT key_hash FROM api_keys").fetchone()
    key = created.stdout.strip()
    assert stored == hmac.new(b"s3cret-pepper", key.encode(), hashlib.sha256).hexdigest()
