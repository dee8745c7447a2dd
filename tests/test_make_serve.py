"""The README's path: `make serve` with nothing exported, every upload format, then `ckpt demo`.

The server is the real `make serve` target, run in a scratch directory that holds links to the
repository's Makefile and pyproject.toml: the default `./data` is that directory's, never the
developer's own. Only a free CKPT_PORT is exported (8000 may be taken); every other setting is
the default (embedded worker on, device auto). One server for the whole module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from app.demo.report import visible
from app.demo.run import REFERENCE_NEW_TOKENS, REFERENCE_PROMPTS, SAMPLING
from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.demo.test_demo_command import run_demo
from tests.generation_api.test_clients import greedy_ids
from tests.live_server import free_port, wait_until_healthy
from tests.models import build_gpt2, save_model_folder, zip_folder
from tests.worker_process import ROOT, checks_by_name, wait_for_report

STARTUP_SECONDS = 120
PROMPT = "hello world"
NEW_TOKENS = 8
DEMO = "demo-gpt2"


@dataclass
class MadeServer:
    directory: Path  # the working directory `make serve` ran in
    process: subprocess.Popen[bytes]
    url: str

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def log(self) -> str:
        return (self.directory / "serve.log").read_text(errors="replace")


def default_environment(port: int) -> dict[str, str]:
    """This process's environment without any CKPT_ setting (nor make's own), plus the port."""
    inherited = ("CKPT_", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    kept = {key: value for key, value in os.environ.items() if not key.startswith(inherited)}
    return kept | {"CKPT_PORT": str(port)}


def start_make_serve(directory: Path) -> MadeServer:
    for name in ("Makefile", "pyproject.toml"):
        (directory / name).symlink_to(ROOT / name)
    venv = Path(sys.prefix)
    port = free_port()
    # `-o` the install stamp: a stale stamp would `pip install -e .` from this scratch
    # directory and repoint the developer's editable install at it.
    command = ["make", f"VENV={venv}", "-o", f"{venv}/.installed", "serve"]
    with (directory / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=directory,
            env=default_environment(port),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make, ckpt serve and its worker: one group to stop
        )
    served = MadeServer(directory, process, f"http://127.0.0.1:{port}")
    try:
        wait_until_healthy(served.url, process, timeout=STARTUP_SECONDS)
    except httpx.TransportError:
        stop_group(process)
        pytest.fail(f"make serve did not answer /health:\n{served.log()}")
    return served


def stop_group(process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """SIGTERM to the whole group (as Ctrl-C in the terminal would), then wait for all of it;
    SIGKILL what is left after `timeout`."""
    signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process.poll() is None or signal_group(process.pid, 0):  # poll() reaps make
        if time.monotonic() > deadline:
            signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            return
        time.sleep(0.2)


def signal_group(group: int, number: int) -> bool:
    """Send `number` to the process group; False when no process is left in it."""
    try:
        os.killpg(group, number)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MadeServer]:
    served = start_make_serve(tmp_path_factory.mktemp("checkout"))
    yield served
    stop_group(served.process)


@pytest.fixture(scope="module")
def client(made: MadeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=made.url, timeout=120) as http:
        yield http


def training_checkpoint(tiny: TinyModel, path: Path) -> Path:
    """`torch.save` of epoch, model and optimizer state; lr 0 keeps the weights tiny's."""
    model = build_gpt2(len(tiny.tokenizer))
    model.load_state_dict(tiny.model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
    torch.save({"epoch": 1, "step": 10, "loss": 3.0, "val_loss": 3.2, **state}, path)
    return path


# Weights-only uploads carry the model's real config: what `ckpt upload --config` sends, so
# that no verdict rests on an inferred head count.
WEIGHTS_ONLY = ("safetensors", "state_dict", "training")
# The checks that apply to each format; the rest must answer not_applicable.
APPLICABLE = {
    "hf_zip": {"integrity", "round_trip", "load", "stability", "weights"},
    "safetensors": {"integrity", "round_trip", "load", "stability", "weights"},
    "state_dict": {"integrity", "round_trip", "load", "stability", "weights"},
    "training": {"integrity", "round_trip", "load", "stability", "weights", "resumability"},
}
STORED_FORMAT = {
    "hf_zip": "hf_zip",
    "safetensors": "safetensors",
    "state_dict": "torch",
    "training": "torch",
}


@pytest.fixture(scope="module")
def stored(
    client: httpx.Client, tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Each format uploaded (name = format) and its automatic verification's report."""
    files = {
        "hf_zip": tiny.zip_stored,  # nested one folder deep, as `zip -r` makes it
        "safetensors": tiny.safetensors,
        "state_dict": tiny.state_dict_pt,
        "training": training_checkpoint(tiny, tmp_path_factory.mktemp("train") / "epoch1.pt"),
    }
    config = (tiny.folder / "config.json").read_text()
    uploaded = {}
    for name, path in files.items():
        params = {"config": config} if name in WEIGHTS_ONLY else {}
        response = upload_raw(client, path, name.replace("_", "-"), **params)
        assert response.status_code == 201, response.text
        uploaded[name] = response.json()
    return {
        name: (body, wait_for_report(client, body["verification"]["id"]))
        for name, body in uploaded.items()
    }


def test_make_serve_keeps_its_data_in_the_working_directory(made: MadeServer) -> None:
    assert (made.data_dir / "registry.sqlite3").is_file()
    database = f"sqlite:///{made.directory.resolve()}/data/registry.sqlite3"
    assert f"database at the latest schema: {database}" in made.log()


@pytest.mark.parametrize("upload", list(APPLICABLE))
def test_every_format_is_stored_and_verified(
    stored: dict[str, tuple[dict[str, Any], dict[str, Any]]], upload: str
) -> None:
    checkpoint, report = stored[upload]
    assert (checkpoint["status"], checkpoint["format"]) == ("ready", STORED_FORMAT[upload])
    checks = {name: check["status"] for name, check in checks_by_name(report).items()}
    assert (report["status"], report["error"]) == ("passed", None), checks
    ran = {name for name, status in checks.items() if status != "not_applicable"}
    assert ran == APPLICABLE[upload]
    assert {checks[name] for name in ran} == {"passed"}


def test_every_format_holds_the_same_weights(
    stored: dict[str, tuple[dict[str, Any], dict[str, Any]]],
) -> None:
    digests = {name: body["weights_digest"] for name, (body, _) in stored.items()}
    assert len(set(digests.values())) == 1, digests


def generate(client: httpx.Client, ref: str) -> httpx.Response:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": NEW_TOKENS, "details": True}}
    return client.post(f"/models/{ref}/generate", json=body)


def test_the_zip_generates_what_the_model_generates(
    client: httpx.Client, stored: dict[str, tuple[dict[str, Any], dict[str, Any]]], tiny: TinyModel
) -> None:
    response = generate(client, stored["hf_zip"][0]["ref"])
    assert response.status_code == 200, response.text
    tokens = response.json()["details"]["tokens"]
    assert [token["id"] for token in tokens] == greedy_ids(tiny, PROMPT, NEW_TOKENS)


@pytest.mark.parametrize("upload", WEIGHTS_ONLY)
def test_weights_without_a_tokenizer_are_refused_for_text(
    client: httpx.Client, stored: dict[str, tuple[dict[str, Any], dict[str, Any]]], upload: str
) -> None:
    ref = stored[upload][0]["ref"]
    response = generate(client, ref)
    assert response.status_code == 409
    assert response.json() == {
        "error": f"checkpoint {ref} has no tokenizer, so it cannot take text",
        "error_type": "not_servable",
    }


def damage(entry: Path) -> None:
    """A relative link (what `./data` used to give), a dangling link and a missing file."""
    tokenizer = entry / "tokenizer.json"
    target = os.readlink(tokenizer)
    tokenizer.unlink()
    tokenizer.symlink_to(os.path.relpath(target, entry.parents[3]))
    weights = entry / "model.safetensors"
    weights.unlink()
    weights.symlink_to(entry.parent / "evicted" / "model.safetensors")
    (entry / "config.json").unlink()


def assert_sound(made: MadeServer, checkpoint: dict[str, Any]) -> None:
    entry = made.data_dir / "cache" / "checkpoints" / checkpoint["id"]
    files = {file["path"]: file["sha256"] for file in checkpoint["files"]}
    assert sorted(p.name for p in entry.iterdir()) == sorted(files)
    for path, sha256 in files.items():
        blob = made.data_dir.resolve() / "blobs" / sha256[:2] / sha256
        assert Path(os.readlink(entry / path)) == blob


def test_a_damaged_cache_entry_heals_for_generation_and_verification(
    made: MadeServer, client: httpx.Client, tiny: TinyModel
) -> None:
    checkpoint = upload_raw(client, tiny.zip_deflated, "healing").json()
    assert wait_for_report(client, checkpoint["verification"]["id"])["status"] == "passed"
    entry = made.data_dir / "cache" / "checkpoints" / checkpoint["id"]
    damage(entry)  # generation has not loaded this checkpoint yet: it reads the folder
    response = generate(client, checkpoint["ref"])
    assert response.status_code == 200, response.text
    assert [t["id"] for t in response.json()["details"]["tokens"]] == greedy_ids(
        tiny, PROMPT, NEW_TOKENS
    )
    assert_sound(made, checkpoint)
    damage(entry)
    requested = client.post(f"/v1/checkpoints/{checkpoint['ref']}/verifications", json={})
    assert requested.status_code == 202, requested.text
    report = wait_for_report(client, requested.json()["id"])
    assert (report["status"], report["error"]) == ("passed", None)
    assert_sound(made, checkpoint)


# -- ckpt demo, with its defaults (3 epochs x 100 steps), against this server -------------------


@pytest.fixture(scope="module")
def demo(
    made: MadeServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    workdir = tmp_path_factory.mktemp("demo")
    done = run_demo(made.url, "--workdir", str(workdir))
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads((workdir / "demo-summary.json").read_text())


def versions(client: httpx.Client, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get("/v1/checkpoints", params={"name": name}).json()[
        "items"
    ]
    return sorted(items, key=lambda item: item["version"])


def test_demo_uploads_each_epoch_as_a_training_checkpoint(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]], client: httpx.Client
) -> None:
    done, summary = demo
    epochs = versions(client, f"{DEMO}-train")
    assert [item["ref"] for item in epochs] == [epoch["ref"] for epoch in summary["epochs"]]
    assert [item["training"]["epoch"] for item in epochs] == [1, 2, 3]
    assert [item["training"]["step"] for item in epochs] == [100, 200, 300]
    assert all(item["format"] == "torch" and item["training"]["resumable"] for item in epochs)
    assert [item["training"]["val_loss"] for item in epochs] == [
        pytest.approx(epoch["val_loss"]) for epoch in summary["epochs"]
    ]
    # n_head 4 is not what a state_dict's shapes suggest: the demo sent its config.
    assert epochs[0]["architecture"]["n_head"] == 4
    assert all(f"uploaded as {item['ref']}" in done.stdout for item in epochs)


def test_demo_best_follows_the_lowest_val_loss_and_is_printed_after_each_epoch(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]], client: httpx.Client
) -> None:
    done, summary = demo
    epochs = versions(client, f"{DEMO}-train")
    lowest = min(epochs, key=lambda item: item["training"]["val_loss"])
    best = client.get(f"/v1/checkpoints/{DEMO}-train:best").json()
    assert best["id"] == lowest["id"]
    assert summary["epochs"][-1]["best_after"] == lowest["ref"]
    assert summary["epochs"][0]["best_after"] == epochs[0]["ref"]
    for epoch in summary["epochs"]:
        assert f"alias best -> {epoch['best_after']}" in done.stdout


def test_demo_verifies_the_final_zip_against_local_outputs_and_prints_passed(
    demo: tuple[subprocess.CompletedProcess[str], dict[str, Any]], client: httpx.Client
) -> None:
    done, summary = demo
    (final,) = versions(client, DEMO)
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
    assert printed["equivalence"] == "passed"


def test_demo_prints_the_text_the_server_generates_after_training(
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


# Last: it deletes a blob from the store.
def test_a_blob_gone_from_the_store_is_named_in_the_report_and_by_generation(
    made: MadeServer, client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    model = build_gpt2(len(tiny.tokenizer), seed=1)  # weights no other upload shares
    folder = save_model_folder(model, tiny.tokenizer, tmp_path / "my_model")
    checkpoint = upload_raw(client, zip_folder(folder, tmp_path / "model.zip"), "lost").json()
    assert wait_for_report(client, checkpoint["verification"]["id"])["status"] == "passed"
    (weights,) = [f for f in checkpoint["files"] if f["path"] == "model.safetensors"]
    sha256 = weights["sha256"]
    (made.data_dir / "blobs" / sha256[:2] / sha256).unlink()
    named = f"checkpoint lost@1: file model.safetensors (blob {sha256[:12]}) cannot be read"
    requested = client.post("/v1/checkpoints/lost@1/verifications", json={})
    report = wait_for_report(client, requested.json()["id"])
    assert (report["status"], report["error"]) == ("failed", None)
    checks = {check["name"]: check for check in report["checks"]}
    assert checks["integrity"]["status"] == "failed"
    assert checks["integrity"]["detail"].startswith(named)
    assert {name for name, check in checks.items() if check["status"] == "not_applicable"} == (
        set(checks) - {"integrity"}
    )
    assert "verified" not in client.get("/v1/checkpoints/lost@1").json()["aliases"]
    response = generate(client, "lost@1")
    assert response.status_code == 424
    assert response.json()["error"].startswith(named)
