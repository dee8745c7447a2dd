"""`reference: {"dtype": ...}`: a checkpoint compared with its own weights cast to that dtype,
as CKPT_SERVING_DTYPE casts them, measures the drift of serving it in that dtype."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_upload import upload_raw
from tests.families import build_family
from tests.live_server import LiveServer
from tests.models import zip_folder
from tests.worker.test_verification import failures, verify
from tests.worker_process import WorkerProcess, checks_by_name, wait_for_report

BFLOAT16_SOURCE = "default for bfloat16 vs float32 on same device"


@pytest.fixture(scope="module")
def worker(server: LiveServer) -> Iterator[WorkerProcess]:
    with WorkerProcess(server.data_dir) as process:
        yield process


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def stored(
    request: pytest.FixtureRequest,
    client: httpx.Client,
    worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    family = request.param
    root = tmp_path_factory.mktemp(family)
    folder = build_family(family, root / family)
    response = upload_raw(client, zip_folder(folder, root / f"{family}.zip"), f"drift-{family}")
    assert response.status_code == 201, response.text
    checkpoint: dict[str, Any] = response.json()
    wait_for_report(client, checkpoint["verification"]["id"])
    return checkpoint


def test_a_dtype_reference_measures_the_drift_of_serving_in_it(
    client: httpx.Client, stored: dict[str, Any]
) -> None:
    report = verify(client, stored["id"], {"reference": {"dtype": "bfloat16"}})
    assert report["status"] == "passed", failures(report)
    assert report["request"]["reference"] == {"dtype": "bfloat16"}
    equivalence = checks_by_name(report)["equivalence"]
    assert equivalence["status"] == "passed", equivalence["detail"]
    metrics = equivalence["metrics"]
    # Really cast: float32 against bfloat16 logits differ, within the bfloat16 tolerance.
    assert 0 < metrics["max_abs_logit_diff"] <= 0.5
    assert metrics["kl_divergence"] >= 0
    assert 0 <= metrics["top1_agreement"] <= 1
    assert "greedy_match" in metrics
    assert metrics["architecture_differences"] == []
    assert equivalence["thresholds"]["max_abs_logit"] == 0.5
    assert set(equivalence["thresholds"]["sources"].values()) == {BFLOAT16_SOURCE}
    assert f"tolerance: {BFLOAT16_SOURCE}" in equivalence["detail"]
    weights = checks_by_name(report)["weights"]
    assert weights["status"] == "passed", weights["detail"]


def test_a_float32_reference_of_a_float32_checkpoint_is_exact(
    client: httpx.Client, stored: dict[str, Any]
) -> None:
    report = verify(client, stored["id"], {"reference": {"dtype": "float32"}})
    equivalence = checks_by_name(report)["equivalence"]
    assert equivalence["status"] == "passed", equivalence["detail"]
    assert equivalence["metrics"]["max_abs_logit_diff"] == 0


@pytest.mark.parametrize(
    "reference",
    [
        {"dtype": "int8"},
        {"dtype": "stored"},
        {"dtype": "bfloat16", "checkpoint": "drift-llama"},
        {"dtype": "bfloat16", "outputs": {}},
        {},
    ],
)
def test_a_bad_dtype_reference_is_refused_on_arrival(
    client: httpx.Client, stored: dict[str, Any], reference: dict[str, Any]
) -> None:
    response = client.post(
        f"/v1/checkpoints/{stored['id']}/verifications", json={"reference": reference}
    )
    assert response.status_code == 422, response.text


def test_a_model_served_as_stored_shows_no_drift(
    client: httpx.Client, stored: dict[str, Any]
) -> None:
    ref = f"{stored['name']}@{stored['version']}"
    assert client.get(f"/models/{ref}/info").json()["serving_drift"] is None
    assert client.get(f"/v1/models/{ref}").json()["serving_drift"] is None
