"""`ckpt demo` as a user runs it: a real subprocess against a real server with its worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.demo.report import visible
from app.demo.run import REFERENCE_NEW_TOKENS, REFERENCE_PROMPTS, SAMPLING
from tests.live_server import LiveServer, free_port
from tests.worker_process import ROOT

SERVER_SETTINGS = {"embedded_worker": True, "device": "cpu"}
NAME = "demo-gpt2"


def run_demo(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "demo", "--url", url, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def demo(
    server: LiveServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("demo")
    done = run_demo(
        server.url, "--epochs", "2", "--steps-per-epoch", "20", "--workdir", str(workdir)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads((workdir / "demo-summary.json").read_text())


def versions(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/v1/checkpoints", params={"name": name}).json()[
        "items"
    ]
    return sorted(items, key=lambda item: item["version"])


def test_each_epoch_is_uploaded_as_a_training_checkpoint(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]], client: httpx.Client
) -> None:
    done, summary = demo
    epochs = versions(client, f"{NAME}-train")
    assert [item["ref"] for item in epochs] == [epoch["ref"] for epoch in summary["epochs"]]
    assert [item["training"]["epoch"] for item in epochs] == [1, 2]
    assert [item["training"]["step"] for item in epochs] == [20, 40]
    assert all(item["format"] == "torch" and item["training"]["resumable"] for item in epochs)
    assert [item["training"]["val_loss"] for item in epochs] == [
        pytest.approx(epoch["val_loss"]) for epoch in summary["epochs"]
    ]
    # n_head 4 is not what a state_dict's shapes suggest: the demo sent its config.
    assert epochs[0]["architecture"]["n_head"] == 4
    assert all(f"uploaded as {item['ref']}" in done.stdout for item in epochs)


def test_best_follows_the_lowest_val_loss_and_is_printed_after_each_epoch(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]], client: httpx.Client
) -> None:
    done, summary = demo
    epochs = versions(client, f"{NAME}-train")
    lowest = min(epochs, key=lambda item: item["training"]["val_loss"])
    best = client.get(f"/v1/checkpoints/{NAME}-train:best").json()
    assert best["id"] == lowest["id"]
    assert summary["epochs"][-1]["best_after"] == lowest["ref"]
    assert summary["epochs"][0]["best_after"] == epochs[0]["ref"]
    for epoch in summary["epochs"]:
        assert f"alias best -> {epoch['best_after']}" in done.stdout


def test_the_final_folder_is_uploaded_zipped_and_verified_against_local_outputs(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]], client: httpx.Client
) -> None:
    done, summary = demo
    (final,) = versions(client, NAME)
    assert final["ref"] == summary["final"]
    assert final["format"] == "hf_zip"
    assert final["tokenizer"]["present"]
    report = client.get(f"/v1/verifications/{summary['verification']['id']}").json()
    assert report["checkpoint"]["id"] == final["id"]
    assert report["status"] == "passed"
    checks = {check["name"]: check["status"] for check in report["checks"]}
    (equivalence,) = [check for check in report["checks"] if check["name"] == "equivalence"]
    assert equivalence["status"] == "passed"
    assert equivalence["metrics"]["reference"] == "outputs document"
    assert equivalence["metrics"]["prompts"] == len(REFERENCE_PROMPTS)
    assert equivalence["metrics"]["max_new_tokens"] == REFERENCE_NEW_TOKENS
    rows = [line.split("│") for line in done.stdout.splitlines() if line.startswith("│")]
    printed = {cells[1].strip(): cells[2].strip() for cells in rows if cells[1].strip()}
    assert {name: printed.get(name) for name in checks} == checks


def test_the_server_generates_what_the_demo_printed_after_training(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]], client: httpx.Client
) -> None:
    done, summary = demo
    samples = summary["samples"]
    body = {"inputs": samples["prompt"], "parameters": dict(SAMPLING)}
    again = client.post(f"/models/{summary['final']}/generate", json=body).json()
    assert visible(again["generated_text"]) == samples["after"]
    assert samples["after"] and samples["after"] != samples["before"]
    assert samples["after"] in done.stdout
    assert samples["before"] in done.stdout


def test_without_a_server_it_says_how_to_start_one(tmp_path: Path) -> None:
    done = run_demo(f"http://127.0.0.1:{free_port()}", "--workdir", str(tmp_path))
    assert done.returncode == 1
    assert "unreachable" in done.stdout
    assert "make serve" in done.stdout
    assert not (tmp_path / "epoch-1.pt").exists()
