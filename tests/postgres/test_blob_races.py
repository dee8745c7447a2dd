"""Two `ckpt serve` processes on one PostgreSQL database and one data dir racing over blobs and
quotas: uploads of the same bytes, a delete against an upload of the same bytes, one key's
uploads against its quota. Nothing is lost, nothing is orphaned, the quota holds."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.db.engine import Database
from app.db.models import BlobLease
from app.db.repositories import CheckpointRepository
from bench.common import running_server
from tests.auth.helpers import bearer, create_key
from tests.conftest import leftover_temp_files
from tests.crash.payloads import model_zip
from tests.database import fresh_database
from tests.postgres.test_two_api_processes import at_once

pytestmark = pytest.mark.postgres_only

ROUNDS = 6


@dataclass
class Cluster:
    data_dir: Path
    db: Database
    settings: Settings
    urls: list[str]
    key: str  # an admin key: once a key exists, every request needs one


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("blob-races") / "data"
    with fresh_database("blob_races", "") as url, ExitStack() as stack:
        # Replicas sharing one data dir: the documented grace period for what may be in flight.
        env = {
            "CKPT_DATABASE_URL": url,
            "CKPT_EMBEDDED_WORKER": "false",
            "CKPT_ORPHAN_GRACE_SECONDS": "3600",
        }
        urls = [stack.enter_context(running_server(data_dir, **env))[0] for _ in range(2)]
        db = Database(url)
        stack.callback(db.dispose)
        settings = Settings(data_dir=data_dir, database_url=url)
        key = create_key(settings, "racer", "admin").key
        yield Cluster(data_dir, db, settings, urls, key)


def upload(url: str, key: str, data: bytes, name: str) -> Callable[[], httpx.Response]:
    def call() -> httpx.Response:
        with httpx.Client(base_url=url, timeout=120, headers=bearer(key)) as client:
            headers = {"Content-Type": "application/octet-stream"}
            return client.post(
                "/v1/checkpoints", params={"name": name}, content=data, headers=headers
            )

    return call


def delete(url: str, key: str, ref: str) -> Callable[[], httpx.Response]:
    def call() -> httpx.Response:
        with httpx.Client(base_url=url, timeout=120, headers=bearer(key)) as client:
            return client.delete(f"/v1/checkpoints/{ref}")

    return call


def stored_blobs(data_dir: Path) -> dict[str, Path]:
    return {path.name: path for path in (data_dir / "blobs").rglob("*") if path.is_file()}


def assert_nothing_lost_or_orphaned(cluster: Cluster) -> None:
    """Every referenced blob is stored with the right bytes, and nothing else is."""
    with cluster.db.reading() as session:
        referenced = CheckpointRepository(session).referenced_digests()
        leases = session.scalar(select(func.count()).select_from(BlobLease))
    blobs = stored_blobs(cluster.data_dir)
    assert sorted(referenced - blobs.keys()) == [], "blobs lost"
    assert sorted(blobs.keys() - referenced) == [], "blobs orphaned"
    for digest, path in blobs.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert leases == 0, "every upload and collector released its leases"
    assert leftover_temp_files(cluster.data_dir) == []


def test_same_new_bytes_under_different_names_on_both_processes(cluster: Cluster) -> None:
    for round_ in range(ROUNDS):
        data = model_zip(seed=1000 + round_)  # new bytes every round: both store, none adopts
        calls = [
            upload(url, cluster.key, data, f"same-{round_}-{i}")
            for i, url in enumerate(cluster.urls)
        ]
        responses = at_once(calls)
        assert [r.status_code for r in responses] == [201, 201], [r.text for r in responses]
        assert responses[0].json()["sha256"] == responses[1].json()["sha256"]
    assert_nothing_lost_or_orphaned(cluster)


def test_a_delete_racing_an_upload_of_the_same_bytes(cluster: Cluster) -> None:
    first, second = cluster.urls
    for round_ in range(ROUNDS):
        data = model_zip(seed=2000 + round_)  # the victim is the only holder of its blobs
        victim = upload(first, cluster.key, data, f"victim-{round_}")()
        assert victim.status_code == 201, victim.text
        gone, heir = at_once(
            [
                delete(first, cluster.key, victim.json()["id"]),
                upload(second, cluster.key, data, f"heir-{round_}"),
            ]
        )
        assert gone.status_code == 204, gone.text
        assert heir.status_code == 201, heir.text
        with httpx.Client(base_url=first, headers=bearer(cluster.key)) as client:
            download = client.get(f"/v1/checkpoints/heir-{round_}/download")
        assert download.status_code == 200 and download.content == data
    assert_nothing_lost_or_orphaned(cluster)


def test_one_key_racing_its_quota_on_both_processes_gets_one_upload(cluster: Cluster) -> None:
    for round_ in range(ROUNDS):
        payloads = [model_zip(seed=3000 + 2 * round_ + i) for i in range(2)]
        quota = max(len(p) for p in payloads) + 10  # room for either, not for both
        key = create_key(cluster.settings, f"quota-{round_}", "write", quota_bytes=quota).key
        calls = [
            upload(url, key, data, f"quota-{round_}-{i}")
            for i, (url, data) in enumerate(zip(cluster.urls, payloads, strict=True))
        ]
        responses = at_once(calls)
        assert sorted(r.status_code for r in responses) == [201, 413], [r.text for r in responses]
        refused = next(r for r in responses if r.status_code == 413)
        assert refused.json()["error"]["code"] == "quota_exceeded"
    assert_nothing_lost_or_orphaned(cluster)
