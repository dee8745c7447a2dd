"""End to end: upload over HTTP, a real worker process verifies, reports come back."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save_file

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.worker_process import ROOT, WorkerProcess, checks_by_name, wait_for_report


@pytest.fixture(scope="module")
def worker(server: LiveServer) -> Iterator[WorkerProcess]:
    with WorkerProcess(server.data_dir) as process:
        yield process


@pytest.fixture(scope="module")
def original(client: httpx.Client, tiny: TinyModel, worker: WorkerProcess) -> dict[str, Any]:
    response = upload_raw(client, tiny.zip_stored, "tiny")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def failures(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (c["name"], c["detail"]) for c in report["checks"] if c["status"] in ("failed", "error")
    ]


def verify(client: httpx.Client, ref: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = client.post(f"/v1/checkpoints/{ref}/verifications", json=body or {})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/v1/verifications/{response.json()['id']}"
    assert response.json()["status"] == "queued"
    return wait_for_report(client, response.json()["id"])


def test_every_upload_is_verified_automatically(
    client: httpx.Client, original: dict[str, Any]
) -> None:
    automatic = original["verification"]
    assert automatic is not None
    report = wait_for_report(client, automatic["id"])
    assert report["status"] == "passed", (report["error"], failures(report))
    checks = checks_by_name(report)
    for name in ("integrity", "round_trip", "load", "stability", "weights"):
        assert checks[name]["status"] == "passed", checks[name]
    assert checks["equivalence"]["status"] == "not_applicable"
    assert checks["resumability"]["status"] == "not_applicable"
    assert checks["round_trip"]["metrics"]["total_epsilon"] == 0.0
    assert checks["round_trip"]["metrics"]["archive_members_differing"] == []
    assert report["device"] == "cpu"
    assert {"torch", "transformers"} <= set(report["library_versions"])
    view = client.get("/v1/checkpoints/tiny").json()
    assert view["verification"] == {"id": automatic["id"], "status": "passed"}
    assert "verified" in view["aliases"]


def test_same_weights_in_another_format_are_equivalent(
    client: httpx.Client, original: dict[str, Any], tiny: TinyModel
) -> None:
    # With its config: without one the head count is assumed and the verdict inconclusive.
    config = tiny.model.config.to_json_string()
    other = upload_raw(client, tiny.state_dict_pt, "tiny-pt", config=config).json()
    report = verify(client, other["id"], {"reference": {"checkpoint": original["id"]}})
    assert report["status"] == "passed", failures(report)
    equivalence = checks_by_name(report)["equivalence"]["metrics"]
    assert equivalence["max_abs_logit_diff"] == 0.0
    assert equivalence["mean_abs_logit_diff"] == 0.0
    assert equivalence["kl_divergence"] == 0.0
    assert equivalence["top1_agreement"] == 1.0
    assert equivalence["first_divergent_step"] is None


def test_overwritten_embedding_fails_equivalence(
    client: httpx.Client, original: dict[str, Any], tiny: TinyModel, tmp_path: Path
) -> None:
    state = {k: v.clone() for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}
    torch.nn.init.ones_(state["transformer.wte.weight"])
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    config = tiny.model.config.to_json_string()
    broken = upload_raw(client, path, "tiny-broken", config=config).json()
    report = verify(client, broken["id"], {"reference": {"checkpoint": original["id"]}})
    assert report["status"] == "failed"
    checks = checks_by_name(report)
    equivalence = checks["equivalence"]
    assert equivalence["status"] == "failed"
    assert equivalence["metrics"]["max_abs_logit_diff"] > 0
    assert equivalence["metrics"]["first_divergent_step"] is not None
    embedding = checks["weights"]["metrics"]["embeddings"]["token"]
    assert embedding["mean"] == 1.0
    assert embedding["std"] == 0.0
    assert embedding["constant_embedding"] is True
    comparison = checks["weights"]["metrics"]["comparison"]
    changed = [t["name"] for t in comparison["changed_tensors"]]
    assert changed == ["transformer.wte.weight"]


def test_corrupted_blob_fails_integrity(
    client: httpx.Client,
    server: LiveServer,
    worker: WorkerProcess,
    tiny: TinyModel,
    tmp_path: Path,
) -> None:
    state = {k: v.clone() + 1 for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}
    path = tmp_path / "victim.safetensors"
    save_file(state, path)
    victim = upload_raw(client, path, "victim").json()
    wait_for_report(client, victim["verification"]["id"])
    blob = server.data_dir / "blobs" / victim["sha256"][:2] / victim["sha256"]
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    report = verify(client, victim["id"], {"checks": ["integrity"]})
    assert report["status"] == "failed"
    integrity = checks_by_name(report)["integrity"]
    assert integrity["status"] == "failed"
    assert integrity["metrics"]["mismatched"]
    aliases = client.get(f"/v1/checkpoints/{victim['id']}").json()["aliases"]
    assert "verified" not in aliases


def test_reference_outputs_recorded_before_upload_prove_the_model(
    client: httpx.Client, original: dict[str, Any], tiny: TinyModel, tmp_path: Path
) -> None:
    document_path = tmp_path / "reference.json"
    recorded = subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli",
            "reference-outputs",
            str(tiny.folder),
            "--prompts",
            "hello world",
            "the quick brown fox",
            "--max-new-tokens",
            "8",
            "-o",
            str(document_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert recorded.returncode == 0, recorded.stderr
    document = json.loads(document_path.read_text())
    report = verify(client, original["id"], {"reference": {"outputs": document}})
    assert report["status"] == "passed", (report["error"], failures(report))
    equivalence = checks_by_name(report)["equivalence"]["metrics"]
    assert equivalence["max_abs_logit_diff"] == 0.0


def test_report_renders_as_html(client: httpx.Client, original: dict[str, Any]) -> None:
    automatic = original["verification"]["id"]
    page = client.get(f"/v1/verifications/{automatic}", headers={"Accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for name in ("integrity", "round_trip", "load", "stability", "weights"):
        assert name in page.text
    assert client.get(f"/v1/verifications/{automatic}?format=html").text == page.text


def test_list_verifications_of_a_checkpoint(client: httpx.Client, original: dict[str, Any]) -> None:
    items = client.get("/v1/checkpoints/tiny/verifications").json()["items"]
    assert original["verification"]["id"] in {item["id"] for item in items}
    assert client.get("/v1/verifications/nope").status_code == 404


def test_bad_verification_requests(client: httpx.Client, original: dict[str, Any]) -> None:
    both = client.post(
        "/v1/checkpoints/tiny/verifications",
        json={"reference": {"checkpoint": "tiny", "outputs": {}}},
    )
    assert both.status_code == 422
    missing = client.post(
        "/v1/checkpoints/tiny/verifications", json={"reference": {"checkpoint": "ghost"}}
    )
    assert missing.status_code == 404
    bad_doc = client.post(
        "/v1/checkpoints/tiny/verifications", json={"reference": {"outputs": {"format": "x"}}}
    )
    assert bad_doc.status_code == 400
    assert bad_doc.json()["error"]["code"] == "invalid_reference_outputs"
    bad_check = client.post("/v1/checkpoints/tiny/verifications", json={"checks": ["vibes"]})
    assert bad_check.status_code == 422


def test_unknown_architecture_gets_weight_checks_only(
    client: httpx.Client, worker: WorkerProcess, tmp_path: Path
) -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    path = tmp_path / "mlp.pth"
    torch.save(mlp.state_dict(), path)
    checkpoint = upload_raw(client, path, "mlp").json()
    report = wait_for_report(client, checkpoint["verification"]["id"])
    assert report["status"] == "passed", failures(report)
    checks = checks_by_name(report)
    for name in ("integrity", "round_trip", "weights"):
        assert checks[name]["status"] == "passed", checks[name]
    for name in ("load", "stability"):
        assert checks[name]["status"] == "not_applicable"
        assert "unknown architecture" in checks[name]["detail"]
    assert checks["round_trip"]["metrics"]["loader"] == "safetensors"


def test_training_checkpoint_is_resumable(
    client: httpx.Client, worker: WorkerProcess, tiny: TinyModel, tmp_path: Path
) -> None:
    model = copy.deepcopy(tiny.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    path = tmp_path / "train.pt"
    state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
    torch.save({"epoch": 1, "step": 10, "val_loss": 3.2, **state}, path)
    checkpoint = upload_raw(client, path, "trained").json()
    report = wait_for_report(client, checkpoint["verification"]["id"])
    resumability = checks_by_name(report)["resumability"]
    assert resumability["status"] == "passed", resumability["detail"]
    assert resumability["metrics"]["step_ok"] is True
