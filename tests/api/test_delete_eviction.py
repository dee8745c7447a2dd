"""Deleting a checkpoint on a real server evicts its model from the generation cache and removes
its materialised folder, unless a running job loads from it (then the worker's sweep does)."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.jobs.queue import ClaimedJob, JobQueue
from app.services.eviction import sweep_deleted_folders
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.observability.scrape import scrape

GENERATE = {"inputs": "hello", "parameters": {"max_new_tokens": 3}}


def upload(client: httpx.Client, tiny: TinyModel, name: str) -> str:
    response = upload_raw(client, tiny.zip_stored, name)
    assert response.status_code == 201, response.text
    checkpoint_id: str = response.json()["id"]
    return checkpoint_id


def generate(client: httpx.Client, name: str) -> None:
    response = client.post(f"/models/{name}/generate", json=GENERATE)
    assert response.status_code == 200, response.text


def folder_of(server: LiveServer, checkpoint_id: str) -> Path:
    return server.data_dir / "cache" / "checkpoints" / checkpoint_id


def resident(server: LiveServer) -> list[str]:
    ids: list[str] = server.app.state.generation.engine.cache.resident()
    return ids


def claim_all(server: LiveServer) -> list[ClaimedJob]:
    queue = JobQueue(server.app.state.db, lease_seconds=60)
    claimed = []
    while (job := queue.claim("test-worker")) is not None:
        claimed.append(job)
    return claimed


def finish(server: LiveServer, jobs: list[ClaimedJob]) -> None:
    queue = JobQueue(server.app.state.db, lease_seconds=60)
    with server.app.state.db.transaction() as session:
        for job in jobs:
            queue.finish(session, job)


def test_delete_evicts_the_model_and_removes_its_folder(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    finish(server, claim_all(server))  # no job of another test runs
    checkpoint_id = upload(client, tiny, "evicted")
    generate(client, "evicted")
    assert checkpoint_id in resident(server)
    assert folder_of(server, checkpoint_id).is_dir()
    models_before = scrape(client).value("ckpt_model_cache_models")

    assert client.delete("/v1/checkpoints/evicted").status_code == 204

    assert checkpoint_id not in resident(server)
    assert scrape(client).value("ckpt_model_cache_models") == models_before - 1
    assert not folder_of(server, checkpoint_id).exists()
    leftovers = [p.name for p in folder_of(server, checkpoint_id).parent.iterdir()]
    assert not [name for name in leftovers if checkpoint_id in name]
    assert client.post("/models/evicted/generate", json=GENERATE).status_code == 404


def test_a_folder_a_running_job_loads_stays_until_the_job_ends(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    """The deleted checkpoint is the reference of a verification a worker is running."""
    finish(server, claim_all(server))  # the uploads' own default verifications, out of the way
    reference_id = upload(client, tiny, "reference-a")
    upload(client, tiny, "subject-b")  # the same bytes: the blobs outlive reference-a
    finish(server, claim_all(server))
    generate(client, "reference-a")
    requested = client.post(
        "/v1/checkpoints/subject-b/verifications",
        json={"reference": {"checkpoint": "reference-a"}},
    )
    assert requested.status_code == 202, requested.text
    running = claim_all(server)
    assert len(running) == 1

    assert client.delete("/v1/checkpoints/reference-a").status_code == 204

    assert reference_id not in resident(server)
    folder = folder_of(server, reference_id)
    assert (folder / "model.safetensors").is_file()  # still readable by the running job
    assert sweep_deleted_folders(server.app.state.db, folder.parent) == 0
    assert folder.is_dir()
    finish(server, running)
    assert sweep_deleted_folders(server.app.state.db, folder.parent) == 1
    assert not folder.exists()
