"""GET /metrics on a real server: counters move with real requests, uploads and generations."""

from __future__ import annotations

import time

import httpx

from app.jobs.queue import JobQueue
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.observability.scrape import scrape

REQUESTS = "ckpt_http_requests_total"


def test_a_404_is_counted_under_its_route_template(client: httpx.Client) -> None:
    before = scrape(client)
    for name in ("no-such-model", "another-missing-one"):
        assert client.get(f"/v1/checkpoints/{name}").status_code == 404
    after = scrape(client)
    labels = {"method": "GET", "route": "/v1/checkpoints/{ref}", "status": "404"}
    assert after.value(REQUESTS, **labels) - before.value(REQUESTS, **labels) == 2
    duration = "ckpt_http_request_duration_seconds_count"
    route = {"method": "GET", "route": "/v1/checkpoints/{ref}"}
    assert after.value(duration, **route) - before.value(duration, **route) == 2
    raw_paths = {s.labels.get("route") for s in after.series(REQUESTS)}
    assert not any("missing" in str(path) for path in raw_paths)
    assert not [s.name for s in after.samples if s.name.endswith("_created")]


def test_unmatched_paths_share_one_label(client: httpx.Client) -> None:
    before = scrape(client)
    for path in ("/wp-admin/setup.php", "/.env", "/x/y/z"):
        assert client.get(path).status_code == 404
    assert client.request("PROPFIND", "/v1/checkpoints").status_code == 405
    after = scrape(client)
    labels = {"method": "GET", "route": "unmatched", "status": "404"}
    assert after.value(REQUESTS, **labels) - before.value(REQUESTS, **labels) == 3
    webdav = {"method": "OTHER", "route": "/v1/checkpoints", "status": "405"}
    assert after.value(REQUESTS, **webdav) - before.value(REQUESTS, **webdav) == 1
    routes = {s.labels["route"] for s in after.series(REQUESTS)}
    assert not routes & {"/wp-admin/setup.php", "/.env", "/x/y/z"}


def test_an_upload_counts_its_bytes_and_its_checkpoint(
    client: httpx.Client, tiny: TinyModel
) -> None:
    size = tiny.safetensors.stat().st_size
    before = scrape(client)
    assert upload_raw(client, tiny.safetensors, "metered").status_code == 201
    assert upload_raw(client, tiny.safetensors, "metered").status_code == 200  # same bytes
    rejected = client.post(
        "/v1/checkpoints",
        params={"name": "metered"},
        content=b"not a checkpoint at all",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert rejected.status_code == 422, rejected.text
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("ckpt_ingest_bytes_total", outcome="created") == size
    assert moved("ckpt_ingest_bytes_total", outcome="duplicate") == size
    assert moved("ckpt_ingest_bytes_total", outcome="rejected") == len(b"not a checkpoint at all")
    assert moved("ckpt_checkpoints", status="ready") == 1
    # The upload queued its verification (no worker runs in this module).
    assert moved("ckpt_jobs", kind="verify", state="queued") == 1


def test_a_generation_counts_its_tokens_and_timings(client: httpx.Client, tiny: TinyModel) -> None:
    assert upload_raw(client, tiny.zip_stored, "speaker").status_code == 201
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 7, "details": True}}
    before = scrape(client)
    first = client.post("/models/speaker/generate", json=body)
    second = client.post("/models/speaker/generate", json=body)
    after = scrape(client)
    assert first.status_code == second.status_code == 200, first.text
    generated = sum(r.json()["details"]["generated_tokens"] for r in (first, second))

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("ckpt_generation_tokens_total") == generated
    assert moved("ckpt_generation_time_per_token_seconds_count") == 2
    assert moved("ckpt_generation_time_per_token_seconds_sum") > 0
    assert moved("ckpt_generation_first_token_seconds_count") == 2
    reasons = [r.json()["details"]["finish_reason"] for r in (first, second)]
    for reason in set(reasons):
        count = reasons.count(reason)
        assert moved("ckpt_generation_requests_total", finish_reason=reason) == count
    assert moved("ckpt_model_cache_loads_total") == 1  # the first request loaded the model
    assert moved("ckpt_model_cache_misses_total") >= 1
    assert moved("ckpt_model_cache_hits_total") >= 1  # the second found it loaded
    assert after.value("ckpt_model_cache_models") == 1
    assert after.value("ckpt_model_cache_bytes") > 0
    assert after.value("ckpt_generation_queue_depth") == 0
    assert after.value("ckpt_generation_running") == 0
    route = {"method": "POST", "route": "/models/{ref}/generate", "status": "200"}
    assert moved(REQUESTS, **route) == 2


def test_metrics_is_served_while_requests_are_in_progress(client: httpx.Client) -> None:
    # The scrape itself is the request in progress: the gauge counts open requests.
    assert scrape(client).value("ckpt_http_requests_in_progress") == 1


def test_jobs_by_state_and_finished_jobs_durations(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    """The worker's side of the queue (claim, finish) driven here: no worker runs here."""
    for name in ("worked-on-1", "worked-on-2", "worked-on-3"):
        assert upload_raw(client, tiny.safetensors, name).status_code == 201
    before = scrape(client)
    queue = JobQueue(server.app.state.db, lease_seconds=30)
    for error in (None, "it broke"):
        job = queue.claim("test-worker")
        assert job is not None
        time.sleep(0.05)
        with server.app.state.db.transaction() as session:
            queue.finish(session, job, error=error)
    running = queue.claim("test-worker")
    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert running is not None
    assert moved("ckpt_jobs", kind="verify", state="queued") == -3
    assert moved("ckpt_jobs", kind="verify", state="running") == 1
    for state in ("succeeded", "failed"):
        labels = {"kind": "verify", "state": state}
        assert moved("ckpt_jobs", **labels) == 1
        assert moved("ckpt_job_duration_seconds_count", **labels) == 1
        assert moved("ckpt_job_duration_seconds_sum", **labels) >= 0.05
        buckets = [
            s
            for s in after.series("ckpt_job_duration_seconds_bucket")
            if s.labels.items() >= labels.items()
        ]
        counts = [s.value for s in buckets]
        assert counts == sorted(counts) and counts[-1] == after.value(
            "ckpt_job_duration_seconds_count", **labels
        )
        assert after.value("ckpt_job_duration_seconds_bucket", le="0.01", **labels) == 0
