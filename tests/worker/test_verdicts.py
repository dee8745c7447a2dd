"""Verdicts never claim more than was checked (real server, real worker, real `ckpt`).

A GPT-2 with n_embd 64 and 2 heads: its shapes alone imply one 64-wide head, so without a config
the registry assumes n_head 1. The config must come from the upload or from the checkpoint
itself (nanoGPT's `model_args`); a verdict computed on the assumption is `inconclusive`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.api.test_upload import upload_raw
from tests.client.cli import ckpt
from tests.conftest import leftover_temp_files
from tests.live_server import LiveServer
from tests.models import build_tokenizer, save_model_folder, zip_folder
from tests.worker_process import WorkerProcess, checks_by_name, wait_for_report

EXIT_INCONCLUSIVE = 4


@dataclass
class TwoHeads:
    model: Any
    folder: Path
    zip: Path
    safetensors: Path
    training: Path
    model_args: dict[str, Any]


@pytest.fixture(scope="module")
def worker(server: LiveServer) -> Iterator[WorkerProcess]:
    with WorkerProcess(server.data_dir) as process:
        yield process


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory: pytest.TempPathFactory) -> TwoHeads:
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("two-heads")
    tokenizer = build_tokenizer()
    torch.manual_seed(3)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    folder = save_model_folder(model, tokenizer, root / "two_heads")
    model_args = {
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 64,
        "block_size": 64,
        "bias": True,
        "vocab_size": len(tokenizer),
        "dropout": 0.0,
    }
    training = root / "ckpt.pt"
    torch.save(nanogpt_checkpoint(model, model_args), training)
    return TwoHeads(
        model=model,
        folder=folder,
        zip=zip_folder(folder, root / "two_heads.zip"),
        safetensors=folder / "model.safetensors",
        training=training,
        model_args=model_args,
    )


def nanogpt_checkpoint(model: Any, model_args: dict[str, Any]) -> dict[str, Any]:
    """What nanoGPT's train.py saves: model, optimizer, model_args, iter_num, config."""
    trained = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=0.0)  # lr 0: weights unchanged
    ids = torch.tensor([[1, 2, 3, 4]])
    trained(ids, labels=ids).loss.backward()
    optimizer.step()
    return {
        "model": trained.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": model_args,
        "iter_num": 10,
        "best_val_loss": 3.5,
        "config": {**model_args, "learning_rate": 6e-4, "batch_size": 12},
    }


@pytest.fixture(scope="module")
def reference_zip(client: httpx.Client, two_heads: TwoHeads, worker: WorkerProcess) -> str:
    response = upload_raw(client, two_heads.zip, "two-heads")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["architecture"]["config_source"] == "config.json"
    return str(body["id"])


def verify(client: httpx.Client, ref: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = client.post(f"/v1/checkpoints/{ref}/verifications", json=body or {})
    assert response.status_code == 202, response.text
    return wait_for_report(client, response.json()["id"])


def aliases(client: httpx.Client, checkpoint_id: str) -> list[str]:
    found: list[str] = client.get(f"/v1/checkpoints/{checkpoint_id}").json()["aliases"]
    return found


# --- section 2: configs ----------------------------------------------------------------------


def test_training_checkpoint_config_comes_from_model_args(
    client: httpx.Client, two_heads: TwoHeads, reference_zip: str
) -> None:
    response = upload_raw(client, two_heads.training, "nano")
    assert response.status_code == 201, response.text
    architecture = response.json()["architecture"]
    assert architecture["config_source"] == "checkpoint:model_args"
    assert architecture["inferred"] is False
    assert (architecture["n_head"], architecture["n_embd"], architecture["n_layer"]) == (2, 64, 2)
    assert architecture["n_positions"] == 64
    stored = client.get("/v1/checkpoints/nano/files/config.json").json()
    assert stored["n_head"] == 2 and "_inferred_assumptions" not in stored
    report = verify(client, "nano", {"reference": {"checkpoint": reference_zip}})
    assert report["status"] == "passed", report["summary"]["reasons"]
    equivalence = checks_by_name(report)["equivalence"]
    assert equivalence["status"] == "passed", equivalence["detail"]
    assert equivalence["metrics"]["architecture_differences"] == []
    assert equivalence["metrics"]["max_abs_logit_diff"] == 0.0
    assert checks_by_name(report)["resumability"]["status"] == "passed"


def test_bare_weights_without_config_are_inconclusive_naming_the_assumption(
    client: httpx.Client, two_heads: TwoHeads, reference_zip: str
) -> None:
    bare = upload_raw(client, two_heads.safetensors, "bare").json()
    architecture = bare["architecture"]
    assert (architecture["inferred"], architecture["config_source"]) == (True, "inferred")
    assert architecture["n_head"] == 1
    assert architecture["assumptions"] == ["n_head 1 assumed from tensor shapes (heads 64 wide)"]
    report = verify(client, bare["id"], {"reference": {"checkpoint": reference_zip}})
    assert report["status"] == "inconclusive", report["summary"]
    equivalence = checks_by_name(report)["equivalence"]
    assert equivalence["status"] == "inconclusive"
    assert equivalence["passed"] is None
    assert equivalence["metrics"]["architecture_differences"] == ["n_head 1 vs 2"]
    assert equivalence["metrics"]["verdict_on_assumption"] == "failed"
    assert "The architectures differ (n_head 1 vs 2)" in equivalence["detail"]
    assert "n_head 1 assumed from tensor shapes" in equivalence["detail"]
    assert "config=" in equivalence["detail"] and "--config" in equivalence["detail"]
    for name in ("load", "stability"):
        assert checks_by_name(report)[name]["status"] == "inconclusive"
    assert report["summary"]["line"].startswith("inconclusive: integrity, round_trip and weights")
    automatic = wait_for_report(client, bare["verification"]["id"])
    assert automatic["status"] == "inconclusive"
    assert "verified" not in aliases(client, bare["id"])


def test_an_outputs_document_names_the_architecture_it_was_recorded_with(
    client: httpx.Client, two_heads: TwoHeads, reference_zip: str
) -> None:
    from app.verify.reference_outputs import record_reference_outputs

    document = record_reference_outputs(two_heads.folder, max_new_tokens=4)
    assert document["architecture"]["n_head"] == 2
    bare = upload_raw(client, two_heads.safetensors, "bare").json()  # stored above, inferred
    report = verify(client, bare["id"], {"reference": {"outputs": document}})
    equivalence = checks_by_name(report)["equivalence"]
    assert equivalence["status"] == "inconclusive"
    assert equivalence["metrics"]["architecture_differences"] == ["n_head 1 vs 2"]
    assert "The architectures differ (n_head 1 vs 2)" in equivalence["detail"]


def test_the_same_weights_with_their_config_pass(
    client: httpx.Client, two_heads: TwoHeads, reference_zip: str
) -> None:
    config = two_heads.model.config.to_json_string()
    response = upload_raw(client, two_heads.safetensors, "bare-configured", config=config)
    assert response.status_code == 201, response.text
    architecture = response.json()["architecture"]
    assert (architecture["config_source"], architecture["inferred"]) == ("upload", False)
    automatic = wait_for_report(client, response.json()["verification"]["id"])
    assert automatic["status"] == "passed", automatic["summary"]
    report = verify(client, "bare-configured", {"reference": {"checkpoint": reference_zip}})
    assert report["status"] == "passed", report["summary"]["reasons"]
    assert checks_by_name(report)["equivalence"]["metrics"]["max_abs_logit_diff"] == 0.0
    assert "verified" in aliases(client, response.json()["id"])


def test_cli_upload_passes_a_config_file(
    server: LiveServer, client: httpx.Client, two_heads: TwoHeads, tmp_path: Path
) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(two_heads.model.config.to_json_string())
    result = ckpt(
        server.url, "upload", str(two_heads.safetensors), "--name", "cli-configured",
        "--config", str(config_file), "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    architecture = json.loads(result.stdout)["architecture"]
    assert (architecture["config_source"], architecture["n_head"]) == ("upload", 2)
    broken = tmp_path / "broken.json"
    broken.write_text("[1, 2]")
    refused = ckpt(server.url, "upload", str(two_heads.safetensors), "--config", str(broken))
    assert refused.returncode == 2 and "--config" in refused.stderr


@pytest.mark.parametrize(
    ("change", "code", "named"),
    [
        ({"n_layer": 3}, "config_weights_mismatch", "n_layer = 3"),
        ({"n_embd": 128}, "config_weights_mismatch", "n_embd = 128"),
        ({"block_size": 32}, "config_weights_mismatch", "n_positions = 32"),
        ({"n_head": "two"}, "config_invalid", "model_args.n_head = 'two'"),
        ({"n_head": 3}, "config_invalid", "n_head=3"),
        ({"bias": False}, "config_weights_mismatch", "bias = False"),
        ({"dropout": 2.5}, "config_invalid", "model_args.dropout = 2.5"),
    ],
)
def test_checkpoint_config_contradicting_the_weights_is_refused(
    server: LiveServer,
    client: httpx.Client,
    two_heads: TwoHeads,
    tmp_path: Path,
    change: dict[str, Any],
    code: str,
    named: str,
) -> None:
    path = tmp_path / "lying.pt"
    torch.save(nanogpt_checkpoint(two_heads.model, {**two_heads.model_args, **change}), path)
    response = upload_raw(client, path, "lying")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert named in error["message"]
    assert leftover_temp_files(server.data_dir) == []


def test_uploaded_config_contradicting_the_checkpoints_is_refused(
    client: httpx.Client, two_heads: TwoHeads
) -> None:
    config = json.loads(two_heads.model.config.to_json_string()) | {"n_head": 4}
    response = upload_raw(client, two_heads.training, "conflicting", config=json.dumps(config))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "config_conflict"
    assert "n_head = 4" in response.json()["error"]["message"]


# --- section 3: what a report may claim ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny T5 folder zipped (no causal LM: the registry stores it but cannot load it), and an
    outputs document recorded from a tiny Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    from app.verify.reference_outputs import record_reference_outputs

    root = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    folder = root / "llama"
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    document = record_reference_outputs(folder, token_ids=[[1, 2, 3, 4]], max_new_tokens=3)
    reference = root / "ref.json"
    reference.write_text(json.dumps(document))
    t5 = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    T5ForConditionalGeneration(t5).eval().save_pretrained(root / "t5")
    return zip_folder(root / "t5", root / "t5.zip"), reference


def test_an_unloadable_model_with_a_reference_document_is_inconclusive_not_verified(
    server: LiveServer, client: httpx.Client, worker: WorkerProcess, tiny_t5: tuple[Path, Path]
) -> None:
    archive, reference = tiny_t5
    stored = upload_raw(client, archive, "tiny-t5").json()
    assert stored["architecture"]["model_type"] == "t5"
    automatic = wait_for_report(client, stored["verification"]["id"])
    assert automatic["status"] == "inconclusive"
    assert "load applies to this checkpoint but could not run" in automatic["summary"]["line"]
    result = ckpt(server.url, "verify", "tiny-t5", "--reference", str(reference), "--wait")
    assert result.returncode == EXIT_INCONCLUSIVE, result.stdout + result.stderr
    assert "inconclusive" in result.stdout
    as_json = ckpt(
        server.url, "verify", "tiny-t5", "--reference", str(reference), "--wait", "--json"
    )
    assert as_json.returncode == EXIT_INCONCLUSIVE
    report = json.loads(as_json.stdout)
    assert report["status"] == "inconclusive"
    assert checks_by_name(report)["equivalence"]["status"] == "not_applicable"
    assert any(
        reason.startswith("equivalence applies to this checkpoint but could not run")
        for reason in report["summary"]["reasons"]
    )
    assert "verified" not in aliases(client, stored["id"])
    asked = ckpt(server.url, "verify", "tiny-t5", "--checks", "load", "--wait", "--json")
    assert asked.returncode == EXIT_INCONCLUSIVE
    assert json.loads(asked.stdout)["summary"]["reasons"][0].startswith(
        "load was requested but could not run"
    )


def test_mlp_state_dict_is_verified_for_its_bytes_and_tensors_only(
    client: httpx.Client, worker: WorkerProcess, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    path = tmp_path / "mlp.pth"
    torch.save(mlp.state_dict(), path)
    stored = upload_raw(client, path, "mlp-verdict").json()
    report = wait_for_report(client, stored["verification"]["id"])
    assert report["status"] == "passed", report["summary"]["reasons"]
    summary = report["summary"]
    assert summary["kind"] == "weights_only"
    assert summary["applicable"] == ["integrity", "round_trip", "weights"]
    assert summary["checked"] == ["integrity", "round_trip", "weights"]
    skipped = {entry["name"]: entry for entry in summary["not_checked"]}
    assert {"load", "stability", "equivalence", "resumability"} == set(skipped)
    assert "unknown architecture" in skipped["load"]["reason"]
    assert summary["line"].startswith("passed: integrity, round_trip and weights passed")
    assert "not run: load (unknown architecture" in summary["line"]
    assert "weights-only artifact" in summary["line"]
    assert "verified" in aliases(client, stored["id"])
    page = client.get(f"/v1/verifications/{report['id']}?format=html").text
    assert "weights-only artifact" in page

    asked = verify(client, stored["id"], {"checks": ["load"]})
    assert asked["status"] == "inconclusive"
    assert "verified" not in aliases(client, stored["id"])
    subset = verify(client, stored["id"], {"checks": ["integrity"]})
    assert subset["status"] == "passed" and subset["summary"]["complete"] is False
    assert "verified" not in aliases(client, stored["id"])
    again = verify(client, stored["id"])
    assert again["status"] == "passed" and again["summary"]["complete"] is True
    assert "verified" in aliases(client, stored["id"])


def test_the_ui_upload_form_sends_a_config(client: httpx.Client, two_heads: TwoHeads) -> None:
    page = client.get("/ui").text
    assert 'name="config" id="upload-config"' in page
    script = client.get("/ui/static/ui.js").text
    assert 'body.append("config", config)' in script
    # What the form's script sends: multipart with the config.json text as a field.
    with two_heads.safetensors.open("rb") as weights:
        response = client.post(
            "/v1/checkpoints",
            files={"file": ("model.safetensors", weights, "application/octet-stream")},
            data={"name": "form-configured", "config": two_heads.model.config.to_json_string()},
        )
    assert response.status_code == 201, response.text
    architecture = response.json()["architecture"]
    assert (architecture["config_source"], architecture["n_head"]) == ("upload", 2)
