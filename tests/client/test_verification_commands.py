"""Verifications through the client and `ckpt verify` / `ckpt report`, with a real worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.client import Checkpoint, Client, RegistryError, Verification
from tests.client.cli import ckpt, ckpt_json
from tests.conftest import TinyModel
from tests.live_server import LiveServer
from tests.worker_process import WorkerProcess


@pytest.fixture(scope="module")
def registry(server: LiveServer) -> Iterator[Client]:
    with WorkerProcess(server.data_dir), Client(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def stored(registry: Client, tiny: TinyModel) -> Checkpoint:
    return registry.upload(tiny.zip_stored, name="tiny")


@pytest.fixture(scope="module")
def broken(
    registry: Client, tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> Checkpoint:
    """The tiny model with its token embedding overwritten with ones: the weights check fails."""
    state = {k: v.clone() for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}
    torch.nn.init.ones_(state["transformer.wte.weight"])
    path = tmp_path_factory.mktemp("broken") / "broken.safetensors"
    save_file(state, path)
    return registry.upload(path, name="tiny-broken")


def test_wait_follows_the_job_to_its_report(registry: Client, stored: Checkpoint) -> None:
    job = registry.verify("tiny", checks=["integrity", "load"], prompts=["hello world"])
    assert job.status == "queued" and job.checkpoint.id == stored.id
    seen: list[Verification] = []
    report = registry.wait(job.id, poll_seconds=0.1, progress=seen.append)
    assert report.passed and seen[-1] == report
    assert [c["name"] for c in report.checks if c["status"] != "not_applicable"] == [
        "integrity",
        "load",
    ]
    assert report.request["prompts"] == ["hello world"]
    assert job.id in {v.id for v in registry.verifications("tiny")}
    assert "<html" in registry.report_html(job.id).lower()
    with pytest.raises(RegistryError) as missing:
        registry.verification("nope")
    assert missing.value.status == 404


def test_cli_verify_passes_with_a_reference_checkpoint(
    server: LiveServer, registry: Client, stored: Checkpoint, tiny: TinyModel
) -> None:
    # With its config: without one the head count is assumed and the verdict inconclusive.
    other = registry.upload(tiny.state_dict_pt, name="tiny-pt", config=tiny.model.config.to_dict())
    result = ckpt(
        server.url,
        "verify",
        other.ref,
        "--reference",
        "tiny@1",
        "--wait",
        "--checks",
        "equivalence",
        "weights",
        "--max-new-tokens",
        "4",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout and "max_abs_logit_diff=0" in result.stdout
    for check in ("equivalence", "weights"):
        assert check in result.stdout


def test_cli_verify_fails_with_exit_1(server: LiveServer, broken: Checkpoint) -> None:
    report = ckpt(server.url, "verify", broken.ref, "--checks", "weights", "--wait", "--json")
    assert report.returncode == 1, report.stderr
    body = json.loads(report.stdout)
    assert body["status"] == "failed"
    weights = next(c for c in body["checks"] if c["name"] == "weights")
    assert weights["status"] == "failed"
    human = ckpt(server.url, "verify", broken.ref, "--checks", "weights", "--wait")
    assert human.returncode == 1 and "failed" in human.stdout and "weights" in human.stdout


def test_cli_verify_against_a_reference_outputs_file(
    server: LiveServer, registry: Client, stored: Checkpoint, tiny: TinyModel, tmp_path: Path
) -> None:
    from app.verify.reference_outputs import record_reference_outputs

    document = record_reference_outputs(
        tiny.folder, prompts=["hello world"], token_ids=None, max_new_tokens=4, device="cpu"
    )
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(document))
    queued = ckpt_json(
        server.url, "verify", "tiny", "--reference", str(path), "--checks", "equivalence"
    )
    assert queued["status"] == "queued"
    assert queued["request"]["reference"] == {"outputs": "uploaded reference outputs document"}
    report = registry.wait(queued["id"], poll_seconds=0.1)
    assert report.passed, report.checks
    assert next(c for c in report.checks if c["name"] == "equivalence")["status"] == "passed"
    human = ckpt(server.url, "verify", "tiny", "--checks", "integrity")
    assert human.returncode == 0 and "ckpt report" in human.stdout


def test_cli_report_as_table_json_and_html(
    server: LiveServer, registry: Client, broken: Checkpoint, tmp_path: Path
) -> None:
    job = registry.verify(broken.ref, checks=["weights"])
    registry.wait(job.id, poll_seconds=0.1)
    page = tmp_path / "report.html"
    human = ckpt(server.url, "report", job.id, "--html", str(page))
    assert human.returncode == 1
    assert job.id in human.stdout and "weights" in human.stdout
    narrow = ckpt(server.url, "report", job.id, COLUMNS="80")
    assert max(len(line) for line in narrow.stdout.splitlines()) <= 80
    header = ["check", "status", "key", "figure", "threshold", "time"]
    assert header in [line.split() for line in narrow.stdout.splitlines()]
    assert "<html" in page.read_text().lower() and job.id in page.read_text()
    passed = registry.wait(registry.verify("tiny", checks=["integrity"]).id, poll_seconds=0.1)
    assert ckpt_json(server.url, "report", passed.id)["status"] == "passed"
    missing = ckpt(server.url, "report", "nope")
    assert missing.returncode == 3 and "not_found" in missing.stderr
