"""The checks on stored checkpoints, end to end: bytes changed in the blob store after ingest
are caught by `integrity` and `round_trip` (tensor named), a file that no longer loads fails
`load`, a partial tolerance keeps the defaults of its comparison, a request the worker would
refuse answers 422 at once, and an archive accepted under raised limits verifies under them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save_file

from app.ingest.safetensors_format import read_header
from app.ingest.types import IngestLimits
from app.verify.reference_outputs import record_reference_outputs
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.models import save_model_folder, zip_folder
from tests.worker_process import WorkerProcess, checks_by_name, wait_for_report

ZIP_ENTRIES = 10_050  # more than the default CKPT_MAX_ZIP_ENTRIES (10 000)
SERVER_SETTINGS = {"max_zip_entries": 20_000}
VICTIM = "transformer.h.0.attn.c_attn.weight"
TIED = "lm_head.weight"


@pytest.fixture(scope="module")
def worker(server: LiveServer) -> Iterator[WorkerProcess]:
    with WorkerProcess(server.data_dir, CKPT_MAX_ZIP_ENTRIES="20000") as process:
        yield process


def _state(tiny: TinyModel, shift: float) -> dict[str, torch.Tensor]:
    """The tiny model's weights moved by `shift`: distinct bytes, so no blob is shared."""
    return {k: v.detach() + shift for k, v in tiny.model.state_dict().items() if k != TIED}


def _safetensors(tiny: TinyModel, shift: float, path: Path) -> Path:
    save_file(_state(tiny, shift), path)
    return path


def _zip(tiny: TinyModel, shift: float, root: Path, **extra: bytes) -> Path:
    model = type(tiny.model)(tiny.model.config)
    model.load_state_dict(_state(tiny, shift), strict=False)
    model.tie_weights()
    folder = save_model_folder(model, tiny.tokenizer, root / "folder")
    return zip_folder(folder, root / "model.zip", extra=extra)


def _upload(client: httpx.Client, path: Path, name: str) -> dict[str, Any]:
    response = upload_raw(client, path, name)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    report = wait_for_report(client, body["verification"]["id"])
    assert checks_by_name(report)["round_trip"]["status"] == "passed", report
    return body


def _verify(client: httpx.Client, ref: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/v1/checkpoints/{ref}/verifications", json=body)
    assert response.status_code == 202, response.text
    return wait_for_report(client, response.json()["id"])


def _blob(server: LiveServer, sha256: str) -> Path:
    return server.data_dir / "blobs" / sha256[:2] / sha256


def _weights_blob(server: LiveServer, checkpoint: dict[str, Any]) -> Path:
    (weights,) = [f for f in checkpoint["files"] if f["path"] == "model.safetensors"]
    return _blob(server, weights["sha256"])


def _flip_low_bit(path: Path, tensor: str) -> None:
    """Flip the lowest mantissa bit of the tensor's first float: the value stays finite."""
    header = read_header(path, IngestLimits())
    (span,) = [s for s in header.tensors if s.name == tensor]
    data = bytearray(path.read_bytes())
    data[header.data_start + span.begin] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_changed_byte_in_a_bare_safetensors_fails_both_checks(
    client: httpx.Client, server: LiveServer, worker: WorkerProcess, tiny: TinyModel, tmp_path: Path
) -> None:
    checkpoint = _upload(client, _safetensors(tiny, 1.0, tmp_path / "m.safetensors"), "bare")
    _flip_low_bit(_weights_blob(server, checkpoint), VICTIM)

    report = _verify(client, checkpoint["id"], {"checks": ["integrity", "round_trip"]})

    checks = checks_by_name(report)
    assert report["status"] == "failed"
    integrity = checks["integrity"]
    assert integrity["status"] == "failed"
    assert integrity["metrics"]["mismatched"] == ["model.safetensors"]
    assert integrity["metrics"]["changed_tensors"] == {"model.safetensors": [VICTIM]}
    assert VICTIM in integrity["detail"]
    round_trip = checks["round_trip"]
    assert round_trip["status"] == "failed"
    assert round_trip["metrics"]["loader"] == "from_pretrained"
    assert round_trip["metrics"]["hash_mismatched"] == [VICTIM]
    assert f"{VICTIM} differs from the sha256 recorded at ingest" in round_trip["detail"]
    # The upload is the stored file: nothing independent to subtract, so no ε is claimed.
    assert round_trip["metrics"]["total_epsilon"] is None
    assert "no independent copy" in round_trip["metrics"]["epsilon_unavailable"]


def test_a_changed_byte_in_a_stored_zip_member_is_measured_against_the_archive(
    client: httpx.Client, server: LiveServer, worker: WorkerProcess, tiny: TinyModel, tmp_path: Path
) -> None:
    checkpoint = _upload(client, _zip(tiny, 2.0, tmp_path), "zipped")
    automatic = wait_for_report(client, checkpoint["verification"]["id"])
    passed = checks_by_name(automatic)["round_trip"]["metrics"]
    assert passed["total_epsilon"] == 0.0
    assert passed["epsilon_source"] == "sha256 equal to the upload's bytes"
    _flip_low_bit(_weights_blob(server, checkpoint), VICTIM)

    report = _verify(client, checkpoint["id"], {"checks": ["integrity", "round_trip"]})

    checks = checks_by_name(report)
    assert checks["integrity"]["status"] == "failed"
    assert checks["integrity"]["metrics"]["changed_tensors"] == {"model.safetensors": [VICTIM]}
    metrics = checks["round_trip"]["metrics"]
    assert checks["round_trip"]["status"] == "failed"
    assert metrics["archive_members_differing"] == ["model.safetensors"]
    assert metrics["hash_mismatched"] == [VICTIM]
    assert metrics["epsilon_source"] == "upload archive member my_model/model.safetensors"
    assert list(metrics["nonzero_epsilon_tensors"]) == [VICTIM]
    assert 0 < metrics["total_epsilon"] == metrics["max_tensor_epsilon"] < 1e-3


def test_a_garbled_stored_file_fails_load_with_the_reason(
    client: httpx.Client, server: LiveServer, worker: WorkerProcess, tiny: TinyModel, tmp_path: Path
) -> None:
    checkpoint = _upload(client, _zip(tiny, 3.0, tmp_path), "garbled")
    blob = _weights_blob(server, checkpoint)
    data = bytearray(blob.read_bytes())
    data[8] = ord("X")  # the header's opening '{': same size, no longer JSON
    blob.write_bytes(bytes(data))

    report = _verify(client, checkpoint["id"], {"checks": ["integrity", "round_trip", "load"]})

    assert report["status"] == "failed", report
    assert report["error"] is None
    checks = checks_by_name(report)
    assert {name: check["status"] for name, check in checks.items()} == {
        "integrity": "failed",
        "round_trip": "failed",
        "load": "failed",
    }
    assert checks["load"]["detail"].startswith("the model does not load from the stored files: ")
    assert "header" in checks["load"]["detail"].lower()
    assert "the stored files do not reload (from_pretrained)" in checks["round_trip"]["detail"]
    changed = checks["integrity"]["metrics"]["changed_tensors"]["model.safetensors"]
    assert changed.startswith("no longer a valid safetensors file")


def test_a_partial_tolerance_keeps_the_defaults_of_its_comparison(
    client: httpx.Client, worker: WorkerProcess, tiny: TinyModel, tmp_path: Path
) -> None:
    checkpoint = _upload(client, tiny.zip_stored, "tolerant")
    document = record_reference_outputs(tiny.folder, ["hello world"], None, max_new_tokens=4)
    document["device"] = "cuda:0"  # recorded on another device type than this CPU worker
    body = {"reference": {"outputs": document}, "tolerance": {"max_kl": 1e-3}}

    report = _verify(client, checkpoint["id"], {**body, "checks": ["equivalence"]})

    equivalence = checks_by_name(report)["equivalence"]
    assert equivalence["status"] == "passed", equivalence["detail"]
    other = "default for float32 on other device"
    assert equivalence["thresholds"] == {
        "max_abs_logit": 1e-2,
        "min_top1_agreement": 0.99,
        "max_kl": 1e-3,
        "greedy_match": True,
        "sources": {"max_abs_logit": other, "min_top1_agreement": other, "max_kl": "requested"},
    }


def test_a_zip_accepted_under_raised_limits_verifies_under_them(
    client: httpx.Client, worker: WorkerProcess, tiny: TinyModel, tmp_path: Path
) -> None:
    extra = {f"my_model/notes/{i:05d}.txt": b"n" for i in range(ZIP_ENTRIES)}
    checkpoint = _upload(client, _zip(tiny, 4.0, tmp_path, **extra), "many-files")
    report = wait_for_report(client, checkpoint["verification"]["id"])
    round_trip = checks_by_name(report)["round_trip"]
    assert round_trip["status"] == "passed", round_trip["detail"]
    assert round_trip["metrics"]["archive_members_differing"] == []
    assert len(checkpoint["files"]) > ZIP_ENTRIES


@pytest.fixture(scope="module")
def requests_checkpoint(client: httpx.Client, tiny: TinyModel) -> str:
    """A GPT-2 with a vocabulary of len(tiny.tokenizer) and a context of 64 tokens."""
    assert upload_raw(client, tiny.safetensors, "requests").status_code == 201
    return "requests"


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        ({"token_ids": [[1, 2, 100_000]]}, "invalid_token_ids", "token ids must be in [0, "),
        (
            {"token_ids": [[1] * 65]},
            "invalid_token_ids",
            "an input has 65 tokens; the model takes 64",
        ),
        ({"token_ids": [[]]}, "invalid_token_ids", "an input has no tokens"),
        ({"device": "tpu"}, "invalid_device", "unknown device 'tpu'"),
        ({"device": "cuda:first"}, "invalid_device", "unknown device 'cuda:first'"),
        ({"checks": ["integrity", "vibes"]}, "validation_error", "body.checks.1: "),
    ],
    ids=[
        "token id past the vocabulary",
        "past the context",
        "empty input",
        "tpu",
        "cuda:x",
        "check",
    ],
)
def test_requests_the_worker_would_refuse_answer_422_at_once(
    client: httpx.Client, requests_checkpoint: str, body: dict[str, Any], code: str, named: str
) -> None:
    queued = _verification_ids(client, requests_checkpoint)

    response = client.post(f"/v1/checkpoints/{requests_checkpoint}/verifications", json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert named in response.json()["error"]["message"]
    assert _verification_ids(client, requests_checkpoint) == queued


def _verification_ids(client: httpx.Client, ref: str) -> list[str]:
    items = client.get(f"/v1/checkpoints/{ref}/verifications").json()["items"]
    return [item["id"] for item in items]


def test_token_ids_are_checked_against_the_reference_too(
    client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    small = type(tiny.model.config)(**{**tiny.model.config.to_dict(), "n_positions": 8})
    folder = save_model_folder(type(tiny.model)(small), tiny.tokenizer, tmp_path / "short")
    reference = upload_raw(client, zip_folder(folder, tmp_path / "short.zip"), "short-context")
    assert reference.status_code == 201, reference.text
    assert upload_raw(client, tiny.safetensors, "long-context").status_code == 201

    response = client.post(
        "/v1/checkpoints/long-context/verifications",
        json={"token_ids": [list(range(1, 11))], "reference": {"checkpoint": "short-context"}},
    )

    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert (
        message == "token_ids do not fit short-context@1: an input has 10 tokens; the model takes 8"
    )
