"""Model folders as people zip them: shards, pickled weights, macOS noise, no top folder."""

from __future__ import annotations

import io
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel, leftover_temp_files
from tests.live_server import LiveServer
from tests.models import zip_folder


@pytest.fixture(scope="module")
def reference(client: httpx.Client, tiny: TinyModel) -> dict[str, Any]:
    body: dict[str, Any] = upload_raw(client, tiny.zip_stored, "reference").json()
    return body


def test_sharded_safetensors_folder(
    client: httpx.Client, tiny: TinyModel, reference: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "sharded"
    tiny.model.save_pretrained(folder, max_shard_size="40KB")
    tiny.tokenizer.save_pretrained(folder)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    response = upload_raw(client, zip_folder(folder, tmp_path / "sharded.zip"), "sharded")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["weights_digest"] == reference["weights_digest"]
    assert body["parameter_count"] == reference["parameter_count"]
    tensors = client.get("/v1/checkpoints/sharded/tensors").json()["tensors"]
    assert {t["file"] for t in tensors} == set(shards)


def test_shard_index_naming_a_missing_shard_is_rejected(
    client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    folder = tmp_path / "bad-index"
    tiny.model.save_pretrained(folder, max_shard_size="40KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../etc/passwd"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    response = upload_raw(client, zip_folder(folder, tmp_path / "bad.zip"), "bad-index")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "shard_index_invalid"


def test_folder_with_pytorch_model_bin_goes_through_the_pickle_path(
    client: httpx.Client, tiny: TinyModel, reference: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "bin-folder"
    folder.mkdir()
    torch.save(tiny.model.state_dict(), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(tiny.model.config.to_json_string())
    response = upload_raw(client, zip_folder(folder, tmp_path / "bin.zip"), "bin-folder")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "hf_zip"
    assert body["weights_digest"] == reference["weights_digest"]
    origins = {f["path"]: f["origin"] for f in body["files"]}
    assert origins["pytorch_model.bin"] == "member"
    assert origins["model.safetensors"] == "derived"


def test_pickle_beside_safetensors_is_ambiguous(
    client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    folder = tmp_path / "both"
    tiny.model.save_pretrained(folder)
    torch.save(tiny.model.state_dict(), folder / "pytorch_model.bin")
    response = upload_raw(client, zip_folder(folder, tmp_path / "both.zip"), "both")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "ambiguous_weights"


def test_macos_noise_is_skipped_and_flat_zips_work(
    client: httpx.Client, tiny: TinyModel, reference: dict[str, Any], tmp_path: Path
) -> None:
    noise = {
        "__MACOSX/my_model/._model.safetensors": b"\0\5\x16\7",
        "my_model/.DS_Store": b"Bud1",
    }
    noisy = zip_folder(tiny.folder, tmp_path / "noisy.zip", extra=noise)
    response = upload_raw(client, noisy, "noisy")
    assert response.status_code == 201, response.text
    assert {f["path"] for f in response.json()["files"]} == {p.name for p in tiny.folder.iterdir()}
    flat = upload_raw(client, zip_folder(tiny.folder, tmp_path / "flat.zip", top=None), "flat")
    assert flat.status_code == 201, flat.text
    assert flat.json()["weights_digest"] == reference["weights_digest"]


def test_interrupted_upload_leaves_nothing_behind(server: LiveServer, client: httpx.Client) -> None:
    before = client.get("/v1/checkpoints").json()["items"]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/checkpoints?name=cut HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n"
        )
        sock.sendall(b"PK\x03\x04" + b"\0" * 200_000)
    deadline = time.monotonic() + 10
    while leftover_temp_files(server.data_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftover_temp_files(server.data_dir) == []
    assert client.get("/v1/checkpoints").json()["items"] == before
    assert client.get("/health").status_code == 200


def test_multipart_upload_streams_too(
    client: httpx.Client, tiny: TinyModel, reference: dict[str, Any]
) -> None:
    data = tiny.zip_stored.read_bytes()
    response = client.post(
        "/v1/checkpoints",
        files={"file": ("model.zip", io.BytesIO(data), "application/zip")},
        data={"name": "multipart", "metadata": json.dumps({"lr": 3e-4})},
    )
    assert response.status_code == 201, response.text
    assert response.json()["weights_digest"] == reference["weights_digest"]
    assert response.json()["metadata"] == {"lr": 3e-4}
    assert response.json()["filename"] == "model.zip"
