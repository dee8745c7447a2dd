"""Uploading every accepted format over real HTTP, and what the registry records for each."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.conftest import TinyModel, blob_count, leftover_temp_files
from tests.live_server import LiveServer


def upload_multipart(client: httpx.Client, path: Path, name: str, **fields: str) -> httpx.Response:
    with path.open("rb") as handle:
        return client.post(
            "/v1/checkpoints", files={"file": (path.name, handle)}, data={"name": name, **fields}
        )


def upload_raw(client: httpx.Client, path: Path, name: str, **params: str) -> httpx.Response:
    with path.open("rb") as handle:
        return client.post(
            "/v1/checkpoints",
            content=handle,
            params={"name": name, "filename": path.name, **params},
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
        )


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique_parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields tied weights once


@pytest.fixture(scope="module")
def zip_upload(client: httpx.Client, tiny: TinyModel) -> dict[str, Any]:
    response = upload_multipart(client, tiny.zip_stored, "tiny", metadata='{"run": "a1"}')
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/v1/checkpoints/{response.json()['id']}"
    body: dict[str, Any] = response.json()
    return body


def test_zip_upload_records_metadata(zip_upload: dict[str, Any], tiny: TinyModel) -> None:
    body = zip_upload
    assert body["format"] == "hf_zip"
    assert body["status"] == "ready"
    assert (body["name"], body["version"], body["aliases"]) == ("tiny", 1, ["latest"])
    assert body["sha256"] == sha256_of(tiny.zip_stored.read_bytes())
    assert body["size_bytes"] == tiny.zip_stored.stat().st_size
    assert body["parameter_count"] == unique_parameter_count(tiny.model)
    assert body["parameters_by_dtype"] == {"float32": unique_parameter_count(tiny.model)}
    assert body["bytes_per_parameter"] == 4.0
    assert body["metadata"] == {"run": "a1"}
    config = tiny.model.config
    assert body["architecture"] == {
        "model_type": "gpt2",
        "inferred": False,
        "config_source": "config.json",
        "n_layer": config.n_layer,
        "n_embd": config.n_embd,
        "n_head": config.n_head,
        "vocab_size": config.vocab_size,
        "n_positions": config.n_positions,
        "architectures": ["GPT2LMHeadModel"],
        "num_layers": config.n_layer,
        "hidden_size": config.n_embd,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "head_dim": config.n_embd // config.n_head,
        "intermediate_size": 4 * config.n_embd,
        "context_length": config.n_positions,
        "positional": {"kind": "learned"},
        "tie_word_embeddings": True,
        "dtype": "float32",
        "model_class": "GPT2LMHeadModel",
        "implied_parameter_count": unique_parameter_count(tiny.model),
        "generation": {
            "eos_token_id": config.eos_token_id,
            "bos_token_id": config.bos_token_id,
            "pad_token_id": None,
            "decoder_start_token_id": None,
            "defaults": {},
        },
    }
    assert body["tokenizer"]["present"] is True
    assert body["tokenizer"]["vocab_size"] == len(tiny.tokenizer)


def test_zip_files_strip_top_folder_and_hash_each_file(
    zip_upload: dict[str, Any], tiny: TinyModel
) -> None:
    files = {f["path"]: f for f in zip_upload["files"]}
    expected = {p.name for p in tiny.folder.iterdir()}
    assert set(files) == expected
    for name in expected:
        data = (tiny.folder / name).read_bytes()
        assert files[name]["sha256"] == sha256_of(data), name
        assert files[name]["size"] == len(data)
        assert files[name]["origin"] == "member"


def _independent_ratio(archive: Path) -> float:
    with zipfile.ZipFile(archive) as handle:
        raw = sum(info.file_size for info in handle.infolist() if not info.is_dir())
    return archive.stat().st_size / raw


def test_compression_ratio_matches_independent_computation(
    client: httpx.Client, zip_upload: dict[str, Any], tiny: TinyModel
) -> None:
    assert zip_upload["compression_ratio"] == pytest.approx(_independent_ratio(tiny.zip_stored))
    deflated = upload_multipart(client, tiny.zip_deflated, "tiny-deflated")
    assert deflated.status_code == 201, deflated.text
    ratio = deflated.json()["compression_ratio"]
    assert ratio == pytest.approx(_independent_ratio(tiny.zip_deflated))
    assert ratio < 1.0


def test_identical_reupload_answers_200_with_same_checkpoint(
    client: httpx.Client, zip_upload: dict[str, Any], tiny: TinyModel, server: LiveServer
) -> None:
    blobs_before = blob_count(server.data_dir)
    again = upload_multipart(client, tiny.zip_stored, "tiny")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == zip_upload["id"]
    assert again.json()["version"] == 1
    assert blob_count(server.data_dir) == blobs_before
    assert leftover_temp_files(server.data_dir) == []


def test_same_weights_same_digest_in_every_format(
    client: httpx.Client, zip_upload: dict[str, Any], tiny: TinyModel
) -> None:
    bare = upload_raw(client, tiny.safetensors, "tiny-bare")
    assert bare.status_code == 201, bare.text
    pickled = upload_raw(client, tiny.state_dict_pt, "tiny-pt")
    assert pickled.status_code == 201, pickled.text
    for other in (bare.json(), pickled.json()):
        assert other["weights_digest"] == zip_upload["weights_digest"]
        assert other["parameter_count"] == zip_upload["parameter_count"]
        assert other["tensor_count"] == zip_upload["tensor_count"]
    assert bare.json()["format"] == "safetensors"
    assert bare.json()["compression_ratio"] == 1.0
    assert pickled.json()["format"] == "torch"
    assert pickled.json()["compression_ratio"] == 1.0


def test_bare_safetensors_gets_inferred_gpt2_config(client: httpx.Client, tiny: TinyModel) -> None:
    body = client.get("/v1/checkpoints/tiny-bare").json()
    arch = body["architecture"]
    assert (arch["inferred"], arch["config_source"]) == (True, "inferred")
    assert arch["assumptions"] == [
        f"n_head {arch['n_head']} assumed from tensor shapes (heads 64 wide)"
    ]
    config = tiny.model.config
    assert (arch["n_layer"], arch["n_embd"], arch["vocab_size"], arch["n_positions"]) == (
        config.n_layer,
        config.n_embd,
        config.vocab_size,
        config.n_positions,
    )
    assert {"model.safetensors", "config.json"} == {f["path"] for f in body["files"]}


def test_config_field_is_used_instead_of_inference(client: httpx.Client, tiny: TinyModel) -> None:
    config = tiny.model.config.to_json_string()
    response = upload_raw(client, tiny.safetensors, "tiny-configured", config=config)
    assert response.status_code == 201, response.text
    arch = response.json()["architecture"]
    assert (arch["inferred"], arch["config_source"]) == (False, "upload")
    assert arch["n_head"] == tiny.model.config.n_head


def test_same_bytes_with_another_config_are_refused_not_deduplicated(
    client: httpx.Client, server: LiveServer, tiny: TinyModel
) -> None:
    """The bytes alone are not the model: answering 200 with the version stored under another
    (say inferred) config would silently ignore the config the user just sent."""
    stored = client.get("/v1/checkpoints/tiny-bare").json()
    blobs_before = blob_count(server.data_dir)
    other = tiny.model.config.to_dict() | {"n_head": 4}
    refused = upload_raw(client, tiny.safetensors, "tiny-bare", config=json.dumps(other))
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "config_differs"
    assert "tiny-bare@1" in refused.json()["error"]["message"]
    assert "n_head 2 vs 4" in refused.json()["error"]["message"]
    assert blob_count(server.data_dir) == blobs_before
    assert leftover_temp_files(server.data_dir) == []
    # The config it is stored with (here the inferred head count, 2) is the same upload.
    again = upload_raw(client, tiny.safetensors, "tiny-bare", config=json.dumps({"n_head": 2}))
    assert (again.status_code, again.json()["id"]) == (200, stored["id"]), again.text


def test_tensor_hashes_match_independent_hashes(
    client: httpx.Client, zip_upload: dict[str, Any], tiny: TinyModel
) -> None:
    from safetensors import safe_open

    listing = client.get(f"/v1/checkpoints/{zip_upload['id']}/tensors").json()["tensors"]
    with safe_open(str(tiny.safetensors), "pt") as handle:
        expected = {
            name: sha256_of(
                handle.get_tensor(name).contiguous().view(torch.uint8).numpy().tobytes()
            )
            for name in handle.keys()  # noqa: SIM118 - safe_open is not a mapping
        }
    assert {t["name"]: t["sha256"] for t in listing} == expected
    wte = next(t for t in listing if t["name"] == "transformer.wte.weight")
    assert wte["shape"] == [tiny.model.config.vocab_size, tiny.model.config.n_embd]
    assert wte["numel"] == tiny.model.config.vocab_size * tiny.model.config.n_embd
    assert wte["dtype"] == "float32"


def test_download_streams_the_upload_with_etag_and_ranges(
    client: httpx.Client, zip_upload: dict[str, Any], tiny: TinyModel
) -> None:
    original = tiny.zip_stored.read_bytes()
    full = client.get("/v1/checkpoints/tiny/download")
    assert full.status_code == 200
    assert full.content == original
    assert full.headers["etag"] == f'"{sha256_of(original)}"'
    assert int(full.headers["content-length"]) == len(original)
    part = client.get("/v1/checkpoints/tiny/download", headers={"Range": "bytes=10-109"})
    assert part.status_code == 206
    assert part.content == original[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{len(original)}"


def test_single_file_download(
    client: httpx.Client, zip_upload: dict[str, Any], tiny: TinyModel
) -> None:
    response = client.get("/v1/checkpoints/tiny@1/files/version.txt")
    assert response.status_code == 200
    assert response.content == (tiny.folder / "version.txt").read_bytes()
    missing = client.get("/v1/checkpoints/tiny@1/files/nope.txt")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "file_not_found"


def test_training_checkpoint_records_training_state(
    client: httpx.Client, tiny: TinyModel, tmp_path: Path
) -> None:
    model = copy.deepcopy(tiny.model)  # the session's model must stay as saved
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    ids = torch.tensor([[1, 2, 3, 4]])
    model.train()
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    model.eval()
    path = tmp_path / "epoch3.pt"
    torch.save(
        {
            "epoch": 3,
            "step": 120,
            "model_state_dict": model.state_dict(),
            "optimizer_state_dict": optimizer.state_dict(),
            "loss": 2.5,
            "val_loss": 2.75,
        },
        path,
    )
    response = upload_raw(client, path, "tiny-train")
    assert response.status_code == 201, response.text
    training = response.json()["training"]
    assert (training["epoch"], training["step"]) == (3, 120)
    assert training["loss"] == pytest.approx(2.5)
    assert training["val_loss"] == pytest.approx(2.75)
    assert training["optimizer"]["type"] == "AdamW"
    assert training["optimizer"]["hyperparameters"]["lr"] == pytest.approx(3e-4)
    assert training["optimizer"]["hyperparameters"]["weight_decay"] == pytest.approx(0.01)
    assert training["resumable"]["ok"] is True
    assert response.json()["parameter_count"] == unique_parameter_count(model)


def test_plain_module_state_dict_is_a_weights_only_checkpoint(
    client: httpx.Client, tmp_path: Path
) -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    path = tmp_path / "model.pth"
    torch.save(mlp.state_dict(), path)
    response = upload_raw(client, path, "mlp")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["parameter_count"] == sum(p.numel() for p in mlp.parameters())
    assert body["architecture"] is None
    tensors = client.get("/v1/checkpoints/mlp/tensors").json()["tensors"]
    assert {t["name"] for t in tensors} == set(mlp.state_dict())


def test_upload_without_name_takes_it_from_the_filename(
    client: httpx.Client, tiny: TinyModel
) -> None:
    with tiny.safetensors.open("rb") as handle:
        response = client.post(
            "/v1/checkpoints", files={"file": ("gpt2-small.v2.safetensors", handle)}
        )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "gpt2-small"


def test_upload_in_memory_bytes_with_unknown_length(client: httpx.Client, tiny: TinyModel) -> None:
    data = tiny.safetensors.read_bytes()

    def chunks() -> Iterator[bytes]:
        stream = io.BytesIO(data)
        while piece := stream.read(777):
            yield piece

    response = client.post(
        "/v1/checkpoints",
        content=chunks(),
        params={"name": "chunked"},
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == sha256_of(data)
