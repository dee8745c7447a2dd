"""CKPT_SERVING_DTYPE=bfloat16: a float32 checkpoint served cast to bfloat16, said so in
`/info` and `/v1/models`, decoding exactly as `generate` on the cast model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from app.generation import load_model_folder
from app.runtime.casting import cast_parameters
from tests.api.test_upload import upload_raw
from tests.families import build_family
from tests.generation.conftest import CPU
from tests.generation.reference import generate_reference
from tests.live_server import LiveServer
from tests.models import zip_folder
from tests.worker_process import WorkerProcess, checks_by_name, wait_for_report

SERVER_SETTINGS = {"serving_dtype": "bfloat16"}
PROMPT = "the quick brown fox"


def test_float32_checkpoint_served_in_bfloat16(
    server: LiveServer, client: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder, response = _upload_llama(client, tmp_path_factory, "llama")
    info = client.get("/models/llama/info").json()
    assert (info["model_dtype"], info["stored_dtype"]) == ("bfloat16", "float32")
    card = client.get("/v1/models/llama@1").json()
    assert (card["dtype"], card["stored_dtype"]) == ("bfloat16", "float32")

    generated = client.post(
        "/models/llama/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "details": True}},
    ).json()
    loaded = load_model_folder(folder, CPU)
    cast = cast_parameters(loaded.model, "bfloat16")
    expected = generate_reference(
        cast, list(loaded.tokenizer(PROMPT)["input_ids"]), do_sample=False, max_new_tokens=12
    )
    tokens = generated["details"]["tokens"]
    assert [t["id"] for t in tokens] == expected.ids
    assert [t["logprob"] for t in tokens] == expected.logprobs
    served = server.app.state.generation.engine.cache.peek(response.json()["id"])
    assert {str(p.dtype) for p in served.model.parameters()} == {"torch.bfloat16"}


def test_the_drift_of_serving_in_bfloat16_is_measured_and_shown(
    server: LiveServer, client: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, response = _upload_llama(client, tmp_path_factory, "drift")
    assert _drifts(client) == [{"verification": None, "status": "not_measured"}] * 2

    generated = client.post("/models/drift/generate", json={"inputs": PROMPT})
    assert generated.status_code == 200, generated.text
    queued = _drifts(client)
    assert queued[0] == queued[1] == {"verification": queued[0]["verification"], "status": "queued"}
    client.post("/models/drift/generate", json={"inputs": PROMPT})  # resident: not queued again
    drift_id = queued[0]["verification"]
    listed = client.get(f"/v1/checkpoints/{response.json()['id']}/verifications").json()
    assert [v["id"] for v in listed["items"] if v["request"].get("reference")] == [drift_id]

    with WorkerProcess(server.data_dir):
        report = wait_for_report(client, drift_id)
    assert report["status"] == "passed", report
    equivalence = checks_by_name(report)["equivalence"]["metrics"]
    expected = {
        "verification": drift_id,
        "status": "passed",
        "max_abs_logit": equivalence["max_abs_logit_diff"],
        "mean_abs_logit": equivalence["mean_abs_logit_diff"],
        "kl": equivalence["kl_divergence"],
        "top1_agreement": equivalence["top1_agreement"],
        "greedy_match": equivalence["greedy_match"],
        "tolerance": "default for bfloat16 vs float32 on same device",
    }
    assert expected["max_abs_logit"] > 0
    assert _drifts(client) == [expected, expected]


def _drifts(client: httpx.Client) -> list[dict[str, Any]]:
    """serving_drift as /info and the /v1/models card show it."""
    info = client.get("/models/drift/info").json()
    card = client.get("/v1/models/drift@1").json()
    return [info["serving_drift"], card["serving_drift"]]


def _upload_llama(
    client: httpx.Client, tmp_path_factory: pytest.TempPathFactory, name: str
) -> tuple[Path, httpx.Response]:
    root = tmp_path_factory.mktemp(name)
    folder = build_family("llama", root / "llama")
    response = upload_raw(client, zip_folder(folder, root / f"{name}.zip"), name)
    assert response.status_code == 201, response.text
    return folder, response
