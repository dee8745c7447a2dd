"""Two `ckpt serve` processes on one PostgreSQL database and one data directory."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from app.db.engine import Database
from app.db.models import Checkpoint
from app.db.repositories import CheckpointRepository
from bench.common import running_server
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel, blob_count, leftover_temp_files
from tests.database import fresh_database

pytestmark = pytest.mark.postgres_only


@dataclass
class Cluster:
    data_dir: Path
    db: Database
    urls: list[str]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("two-apis") / "data"
    with fresh_database("two_apis", "") as url, ExitStack() as stack:
        env = {"CKPT_DATABASE_URL": url, "CKPT_EMBEDDED_WORKER": "false"}
        urls = [stack.enter_context(running_server(data_dir, **env))[0] for _ in range(2)]
        db = Database(url)
        stack.callback(db.dispose)
        yield Cluster(data_dir, db, urls)


def at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Run the calls on threads released together, so the requests overlap."""
    start = threading.Barrier(len(calls))

    def released(call: Callable[[], httpx.Response]) -> httpx.Response:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(released, calls))


def upload_to(url: str, path: Path, name: str) -> Callable[[], httpx.Response]:
    def call() -> httpx.Response:
        with httpx.Client(base_url=url, timeout=120) as client:
            return upload_raw(client, path, name)

    return call


def test_the_same_upload_to_both_gives_one_checkpoint_and_one_copy_of_each_blob(
    cluster: Cluster, tiny: TinyModel
) -> None:
    for round_ in range(5):
        name = f"twice-{round_}"
        responses = at_once([upload_to(url, tiny.zip_stored, name) for url in cluster.urls])
        assert sorted(r.status_code for r in responses) == [200, 201], [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
    with cluster.db.reading() as session:
        rows = list(session.scalars(select(Checkpoint).where(Checkpoint.name.like("twice-%"))))
        referenced = CheckpointRepository(session).referenced_digests()
    assert sorted((row.name, row.version) for row in rows) == [(f"twice-{i}", 1) for i in range(5)]
    # Content-addressed: five checkpoints of the same bytes share one copy of each blob.
    assert blob_count(cluster.data_dir) == len(referenced)
    assert leftover_temp_files(cluster.data_dir) == []


def test_different_uploads_of_one_name_to_both_get_distinct_versions(
    cluster: Cluster, tiny: TinyModel
) -> None:
    files = [tiny.zip_stored, tiny.zip_deflated, tiny.safetensors, tiny.state_dict_pt]
    calls = [upload_to(cluster.urls[i % 2], path, "racing") for i, path in enumerate(files)]
    responses = at_once(calls)
    assert [r.status_code for r in responses] == [201] * len(files), [r.text for r in responses]
    assert sorted(r.json()["version"] for r in responses) == [1, 2, 3, 4]
    with httpx.Client(base_url=cluster.urls[1]) as client:
        latest = client.get("/v1/checkpoints/racing").json()
    assert latest["version"] == 4
