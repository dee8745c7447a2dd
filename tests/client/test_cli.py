"""`ckpt` client commands as real subprocesses: human output, --json, exit codes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

from app.client import Client, RegistryError
from tests.api.test_diffs_and_aliases import training_checkpoint
from tests.client.cli import ckpt, ckpt_json
from tests.client.proxy import CorruptingProxy
from tests.conftest import TinyModel
from tests.live_server import LiveServer, free_port


@pytest.fixture(scope="module")
def uploaded(server: LiveServer, tiny: TinyModel) -> dict[str, Any]:
    """The tiny model's folder, zipped on the fly by `ckpt upload`."""
    body: dict[str, Any] = ckpt_json(server.url, "upload", str(tiny.folder), "--name", "cli")
    return body


def test_upload_zips_a_folder_on_the_fly(
    server: LiveServer, uploaded: dict[str, Any], tiny: TinyModel
) -> None:
    assert uploaded["ref"] == "cli@1" and uploaded["format"] == "hf_zip"
    assert uploaded["created"] is True
    members = {f["path"] for f in uploaded["files"] if f["origin"] == "member"}
    assert {"config.json", "model.safetensors", "version.txt", "tokenizer.json"} <= members
    with Client(server.url) as client:
        reference = client.upload(tiny.safetensors, name="cli-st")
    assert uploaded["weights_digest"] == reference.weights_digest
    again = ckpt(server.url, "upload", str(tiny.folder), "--name", "cli")
    assert again.returncode == 0, again.stderr
    assert "already stored as cli@1" in again.stdout
    assert "upload my_model" in again.stderr and "MiB" in again.stderr  # the progress bar
    assert uploaded["sha256"] in again.stdout  # the metadata table
    deflated = ckpt_json(server.url, "upload", str(tiny.folder), "--name", "cli-d", "--deflate")
    assert deflated["size_bytes"] < uploaded["size_bytes"]
    assert deflated["weights_digest"] == uploaded["weights_digest"]


def test_upload_a_file_with_metadata(server: LiveServer, tiny: TinyModel) -> None:
    result = ckpt(
        server.url,
        "upload",
        str(tiny.state_dict_pt),
        "--name",
        "cli-pt",
        "--metadata",
        '{"lr": 3e-4, "note": "[red]x[/red]"}',
    )
    assert result.returncode == 0, result.stderr
    assert "stored as cli-pt@1" in result.stdout
    assert "torch" in result.stdout and "lr=0.0003" in result.stdout
    assert "note=[red]x[/red]" in result.stdout  # printed as given, not as rich markup
    bad = ckpt(server.url, "upload", str(tiny.state_dict_pt), "--metadata", "[1]")
    assert bad.returncode == 2 and "--metadata must be a JSON object" in bad.stderr


def test_list_and_show(server: LiveServer, uploaded: dict[str, Any]) -> None:
    listed = ckpt_json(server.url, "list")
    assert "cli@1" in {item["ref"] for item in listed}
    human = ckpt(server.url, "list", "--name", "cli", "--limit", "1")
    assert human.returncode == 0 and "cli@1" in human.stdout and "hf_zip" in human.stdout
    assert ckpt_json(server.url, "show", "cli") == {**uploaded, "created": False}
    shown = ckpt(server.url, "show", "cli@1")
    assert shown.returncode == 0
    for text in (
        uploaded["id"],
        uploaded["sha256"],
        uploaded["weights_digest"],
        "model_type=gpt2",
        "num_layers=2",
        "num_attention_heads=2",
    ):
        assert text in shown.stdout


def test_tensors(server: LiveServer, uploaded: dict[str, Any]) -> None:
    listing = ckpt_json(server.url, "tensors", "cli")
    assert len(listing["tensors"]) == uploaded["tensor_count"]
    wte = next(t for t in listing["tensors"] if t["name"] == "transformer.wte.weight")
    human = ckpt(server.url, "tensors", "cli")
    assert human.returncode == 0
    assert "transformer.wte.weight" in human.stdout and wte["sha256"][:16] in human.stdout


def test_diff(
    server: LiveServer, uploaded: dict[str, Any], tiny: TinyModel, tmp_path: Path
) -> None:
    state = {k: v.clone() for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}
    state["transformer.wpe.weight"] *= 2
    path = tmp_path / "changed.safetensors"
    save_file(state, path)
    with Client(server.url) as client:
        changed = client.upload(path, name="cli-changed").model_dump(mode="json")
        client.upload(tiny.safetensors, name="cli-same")
    diff = ckpt_json(server.url, "diff", "cli", changed["ref"])
    assert diff["summary"]["changed"] == 1 and diff["identical_weights"] is False
    human = ckpt(server.url, "diff", "cli", changed["ref"])
    assert human.returncode == 0
    assert "transformer.wpe.weight" in human.stdout and "changed" in human.stdout
    same = ckpt(server.url, "diff", "cli", "cli-same")
    assert same.returncode == 0 and "identical weights" in same.stdout


def test_alias(server: LiveServer, uploaded: dict[str, Any]) -> None:
    human = ckpt(server.url, "alias", "cli@1", "prod")
    assert human.returncode == 0 and "cli:prod → cli@1" in human.stdout
    with Client(server.url) as client:
        assert client.get("cli:prod").id == uploaded["id"]
    removed = ckpt_json(server.url, "alias", "cli@1", "prod", "--delete")
    assert "prod" not in removed["aliases"]
    with Client(server.url) as client, pytest.raises(RegistryError):
        client.get("cli:prod")


def test_download_verifies_the_hash(
    server: LiveServer, uploaded: dict[str, Any], tmp_path: Path
) -> None:
    human = ckpt(server.url, "download", "cli", "-o", str(tmp_path / "copy.zip"))
    assert human.returncode == 0, human.stderr
    assert f"sha256 {uploaded['sha256']} verified" in human.stdout
    assert "download cli" in human.stderr
    assert hashlib.sha256((tmp_path / "copy.zip").read_bytes()).hexdigest() == uploaded["sha256"]
    done = ckpt_json(server.url, "download", "cli", "-o", str(tmp_path), "--file", "config.json")
    assert Path(done["path"]) == tmp_path / "config.json"
    assert json.loads((tmp_path / "config.json").read_text())["n_layer"] == 2


def test_corrupted_download_exits_3(
    server: LiveServer, uploaded: dict[str, Any], tmp_path: Path
) -> None:
    with CorruptingProxy(server.url) as proxy:
        proxy.corrupt_downloads = True
        result = ckpt(proxy.url, "download", "cli", "-o", str(tmp_path / "bad.zip"))
    assert result.returncode == 3
    assert "checksum_mismatch" in result.stderr and uploaded["sha256"] in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_generate_plain_and_streamed(server: LiveServer, uploaded: dict[str, Any]) -> None:
    with Client(server.url) as client:
        expected = client.generate("cli", "hello world", max_new_tokens=8).generated_text
    plain = ckpt(server.url, "generate", "cli", "hello world", "--max-new-tokens", "8")
    assert plain.returncode == 0 and plain.stdout == expected + "\n"
    streamed = ckpt(
        server.url, "generate", "cli", "hello world", "--max-new-tokens", "8", "--stream"
    )
    assert streamed.returncode == 0 and streamed.stdout == expected + "\n"
    as_json = ckpt_json(server.url, "generate", "cli", "hello world", "--max-new-tokens", "8")
    assert as_json["generated_text"] == expected
    lines = ckpt(
        server.url, "generate", "cli", "hello world", "--max-new-tokens", "8", "--stream", "--json"
    ).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 8 and events[-1]["generated_text"] == expected


def test_delete(server: LiveServer, tiny: TinyModel) -> None:
    with Client(server.url) as client:
        client.upload(tiny.safetensors, name="cli-gone")
        client.upload(tiny.safetensors, name="cli-gone-too")
        human = ckpt(server.url, "delete", "cli-gone")
        assert human.returncode == 0 and "deleted cli-gone" in human.stdout
        assert ckpt_json(server.url, "delete", "cli-gone-too") == {"deleted": "cli-gone-too"}
        assert [c.name for c in client.iter_checkpoints() if c.name.startswith("cli-gone")] == []


def test_exit_codes_and_error_messages(server: LiveServer, tmp_path: Path) -> None:
    missing = ckpt(server.url, "show", "nope")
    assert missing.returncode == 3
    assert "checkpoint_not_found" in missing.stderr and "HTTP 404" in missing.stderr
    assert "Traceback" not in missing.stderr and missing.stdout == ""
    assert ckpt(server.url, "show").returncode == 2
    no_file = ckpt(server.url, "upload", str(tmp_path / "absent.zip"))
    assert no_file.returncode == 2 and "absent.zip" in no_file.stderr
    nobody = ckpt(f"http://127.0.0.1:{free_port()}", "list")
    assert nobody.returncode == 3 and "unreachable" in nobody.stderr
    assert "Traceback" not in nobody.stderr


def test_tables_keep_their_essential_columns_at_80_columns(
    server: LiveServer, uploaded: dict[str, Any]
) -> None:
    """Nothing cut with an ellipsis, no line wider than the terminal, binary units."""
    listed = ckpt(server.url, "list", "--name", "cli", COLUMNS="80")
    tensors = ckpt(server.url, "tensors", "cli", COLUMNS="80")
    shown = ckpt(server.url, "show", "cli", COLUMNS="80")
    for result in (listed, tensors, shown):
        assert result.returncode == 0, result.stderr
        assert "…" not in result.stdout
        assert max(len(line) for line in result.stdout.splitlines()) <= 80
    header = listed.stdout.splitlines()[0].split()
    assert header == ["ref", "aliases", "size", "created", "(UTC)", "verification"]
    row = next(line for line in listed.stdout.splitlines() if line.startswith("cli@1 "))
    assert "MiB" in row and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", row)
    assert "transformer.h.0.mlp.c_fc.weight   float32   [128, 512]   65,536   256 KiB" in (
        re.sub(r" {3,}", "   ", tensors.stdout)
    )
    assert re.search(r"created +\S* *\d{4}-\d\d-\d\d \d\d:\d\d UTC", shown.stdout)


def test_show_prints_optimizer_hyperparameters_as_rows(
    server: LiveServer, tiny: TinyModel, tmp_path: Path
) -> None:
    path = training_checkpoint(tiny, tmp_path / "e1.pt", 2.5, 1)
    with Client(server.url) as client:
        client.upload(path, name="cli-run")
    shown = ckpt(server.url, "show", "cli-run", COLUMNS="80")
    assert shown.returncode == 0, shown.stderr
    rows = {
        cells[0]: cells[1]
        for line in shown.stdout.splitlines()
        if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 2
    }
    assert rows["training"] == "epoch 1, val_loss 2.5"
    assert rows["optimizer"] == "SGD"
    assert rows["lr"] == "0.1" and rows["momentum"] == "0"
    assert "{" not in shown.stdout and "'params'" not in shown.stdout  # no Python dict
