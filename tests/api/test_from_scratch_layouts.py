"""From-scratch GPT layouts end to end: nanoGPT and "LLMs from scratch" modules (written in
tests/from_scratch_gpt.py) saved as plain state_dicts and as their codebases' training
checkpoints, uploaded to a real server, mapped to GPT2LMHeadModel, verified by a real worker
(every applicable check passes, resumability included) and proved by a reference-outputs document
recorded from the original module."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from app.verify.reference_outputs import record_reference_outputs
from tests.api.test_upload import upload_raw
from tests.from_scratch_gpt import (
    BOOK_CONFIG,
    NANOGPT_ARGS,
    book_gpt,
    book_training_checkpoint,
    nanogpt,
    nanogpt_training_checkpoint,
)
from tests.live_server import LiveServer
from tests.worker.test_verification import failures, verify
from tests.worker_process import WorkerProcess, checks_by_name, wait_for_report

TOKEN_IDS = [[3, 17, 42, 7, 95, 0, 64], [5, 5, 5, 10, 20, 40]]
MAX_NEW_TOKENS = 6


@dataclass(frozen=True)
class Case:
    layout: str
    module: Callable[[], torch.nn.Module]
    saved: Callable[[torch.nn.Module], Any]  # what torch.save gets
    config: dict[str, Any] | None = None  # sent with the upload
    training: bool = False
    added: bool = False  # the mapping adds zero biases


CASES = {
    "nanogpt_state_dict": Case(
        "nanogpt", nanogpt, lambda m: m.state_dict(), config=dict(NANOGPT_ARGS)
    ),
    "nanogpt_no_bias_compiled_training": Case(
        "nanogpt",
        lambda: nanogpt(bias=False),
        lambda m: nanogpt_training_checkpoint(m, bias=False, compiled=True),
        training=True,
        added=True,
    ),
    "nanogpt_training": Case(
        "nanogpt",
        nanogpt,
        lambda m: nanogpt_training_checkpoint(m, bias=True, compiled=False),
        training=True,
    ),
    "book_qkv_bias_state_dict": Case(
        "llms_from_scratch",
        lambda: book_gpt(qkv_bias=True),
        lambda m: m.state_dict(),
        config={**BOOK_CONFIG, "qkv_bias": True},
    ),
    "book_no_qkv_bias_training": Case(
        "llms_from_scratch",
        lambda: book_gpt(qkv_bias=False),
        book_training_checkpoint,
        config=dict(BOOK_CONFIG),
        training=True,
        added=True,
    ),
}


@dataclass
class Uploaded:
    case: Case
    module: torch.nn.Module
    checkpoint: dict[str, Any]


@pytest.fixture(scope="module")
def worker(server: LiveServer) -> Iterator[WorkerProcess]:
    with WorkerProcess(server.data_dir) as process:
        yield process


@pytest.fixture(scope="module")
def uploaded(
    client: httpx.Client, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Uploaded]:
    root = tmp_path_factory.mktemp("from-scratch")
    out = {}
    for name, case in CASES.items():
        module = case.module()
        path = root / f"{name}.pt"
        torch.save(case.saved(module), path)
        params = {"config": json.dumps(case.config)} if case.config else {}
        response = upload_raw(client, path, name, **params)
        assert response.status_code == 201, response.text
        out[name] = Uploaded(case, module.eval(), response.json())
    return out


@pytest.mark.parametrize("name", CASES)
def test_metadata_records_the_layout_and_the_users_parameter_count(
    uploaded: dict[str, Uploaded], name: str
) -> None:
    item = uploaded[name]
    architecture = item.checkpoint["architecture"]
    layout = architecture["layout"]
    assert layout["name"] == item.case.layout
    assert bool(layout["added_parameters"]) == item.case.added
    own = sum(p.numel() for p in item.module.parameters())
    assert item.checkpoint["parameter_count"] == own
    assert architecture["n_head"] == 4 and not architecture["inferred"]
    expected_source = "upload" if item.case.config else "checkpoint:model_args"
    assert architecture["config_source"] == expected_source
    first = next(iter(layout["mapping"]))
    assert "to" in layout["mapping"][first] and "transposed" in layout["mapping"][first]


@pytest.mark.parametrize("name", CASES)
def test_every_applicable_check_passes(
    client: httpx.Client, uploaded: dict[str, Uploaded], name: str
) -> None:
    item = uploaded[name]
    report = wait_for_report(client, item.checkpoint["verification"]["id"])
    assert report["status"] == "passed", (report["error"], failures(report))
    checks = checks_by_name(report)
    applicable = {"integrity", "round_trip", "load", "stability", "weights"}
    if item.case.training:
        applicable.add("resumability")
        assert checks["resumability"]["metrics"]["step_ok"] is True, checks["resumability"]
    assert {n for n, c in checks.items() if c["status"] == "passed"} >= applicable


@pytest.mark.parametrize("name", CASES)
def test_outputs_recorded_with_the_original_module_verify_the_mapped_checkpoint(
    client: httpx.Client, uploaded: dict[str, Uploaded], name: str
) -> None:
    item = uploaded[name]
    document = record_reference_outputs(
        item.module, token_ids=TOKEN_IDS, max_new_tokens=MAX_NEW_TOKENS, context_length=32
    )
    report = verify(client, item.checkpoint["id"], {"reference": {"outputs": document}})
    assert report["status"] == "passed", (report["error"], failures(report))
    equivalence = checks_by_name(report)["equivalence"]
    assert equivalence["status"] == "passed"
    print(f"{name}: max|Δlogit| {equivalence['metrics']['max_abs_logit_diff']:.3g}")


def test_the_stored_folder_loads_with_from_pretrained(
    client: httpx.Client, server: LiveServer, uploaded: dict[str, Uploaded], tmp_path: Path
) -> None:
    item = uploaded["book_qkv_bias_state_dict"]
    for stored in item.checkpoint["files"]:
        if stored["path"] in ("config.json", "model.safetensors"):
            blob = server.data_dir / "blobs" / stored["sha256"][:2] / stored["sha256"]
            (tmp_path / stored["path"]).write_bytes(blob.read_bytes())
    model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor(TOKEN_IDS[:1])
    with torch.no_grad():
        delta = (model(ids).logits - item.module(ids)).abs().max().item()
    assert delta < 1e-5


def test_an_inconsistent_layout_is_refused_naming_the_tensor(
    client: httpx.Client, tmp_path: Path
) -> None:
    state = nanogpt().state_dict()
    del state["transformer.h.1.attn.c_proj.weight"]
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    response = upload_raw(client, path, "broken-nanogpt")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "layout_mismatch"
    assert "transformer.h.1.attn.c_proj.weight" in error["message"]


def test_a_head_count_nobody_gave_is_an_assumption_and_inconclusive(
    client: httpx.Client, worker: WorkerProcess, tmp_path: Path
) -> None:
    path = tmp_path / "bare-book.pt"
    torch.save(book_gpt(qkv_bias=True).state_dict(), path)
    response = upload_raw(client, path, "bare-book")
    assert response.status_code == 201, response.text
    architecture = response.json()["architecture"]
    assert (architecture["inferred"], architecture["config_source"]) == (True, "inferred")
    assert architecture["assumptions"] == ["n_head 1 assumed from tensor shapes (heads 64 wide)"]
    assert architecture["layout"]["name"] == "llms_from_scratch"
    report = wait_for_report(client, response.json()["verification"]["id"])
    assert report["status"] == "inconclusive", report["summary"]
    assert checks_by_name(report)["load"]["status"] == "inconclusive"


@pytest.mark.parametrize(
    ("change", "code", "named"),
    [
        ({"n_head": 8}, "config_conflict", "n_head"),
        ({"bias": True}, "layout_mismatch", "bias = True"),
    ],
)
def test_configs_contradicting_the_checkpoint_are_refused(
    client: httpx.Client, tmp_path: Path, change: dict[str, Any], code: str, named: str
) -> None:
    module = nanogpt(bias=False)
    path = tmp_path / "contradicted.pt"
    torch.save(nanogpt_training_checkpoint(module, bias=False, compiled=False), path)
    response = upload_raw(client, path, "contradicted", config=json.dumps(change))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code and named in error["message"], error
