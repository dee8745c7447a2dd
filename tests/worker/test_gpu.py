"""On a machine with CUDA: the worker verifies on the GPU against outputs recorded on the CPU."""

from __future__ import annotations

import pytest

from app.verify.reference_outputs import record_reference_outputs
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.worker_process import WorkerProcess, checks_by_name, wait_for_report

pytestmark = pytest.mark.gpu


def test_cuda_worker_matches_cpu_reference_outputs(server: LiveServer, tiny: TinyModel) -> None:
    document = record_reference_outputs(
        tiny.folder, prompts=["hello world"], token_ids=None, device="cpu"
    )
    with server.client() as client, WorkerProcess(server.data_dir, CKPT_DEVICE="cuda"):
        checkpoint = upload_raw(client, tiny.zip_stored, "on-gpu").json()
        automatic = wait_for_report(client, checkpoint["verification"]["id"])
        assert automatic["device"].startswith("cuda:0 ")
        assert checks_by_name(automatic)["load"]["status"] == "passed"
        assert checks_by_name(automatic)["round_trip"]["status"] == "passed"
        response = client.post(
            f"/v1/checkpoints/{checkpoint['id']}/verifications",
            json={"reference": {"outputs": document}, "checks": ["equivalence"]},
        )
        report = wait_for_report(client, response.json()["id"])
    equivalence = checks_by_name(report)["equivalence"]
    assert equivalence["status"] == "passed", equivalence["detail"]
    assert equivalence["thresholds"]["max_abs_logit"] == pytest.approx(1e-2)
    assert equivalence["metrics"]["top1_agreement"] >= 0.99
