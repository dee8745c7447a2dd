"""Hostile model folders (zips that are well-formed archives): configs, code, weights, tokenizers.

The weights are the session's tiny GPT-2, so each case is rejected for exactly one reason.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import TinyModel
from tests.hostile.builders import hostile_payloads, torch_bytes, zip_bytes
from tests.hostile.invariants import (
    Footprint,
    assert_nothing_left,
    assert_upload_rejected,
    post_raw,
)
from tests.live_server import LiveServer

# The session's tiny GPT-2 in full: a config that leaves vocab_size or n_positions to
# transformers' defaults (50257, 1024) describes a different model than those weights.
GPT2 = {
    "model_type": "gpt2",
    "n_layer": 2,
    "n_embd": 128,
    "n_head": 2,
    "vocab_size": 300,
    "n_positions": 64,
}
TARGET = Path(tempfile.gettempdir()) / f"ckpt-hostile-{uuid.uuid4().hex}.safetensors"


def config(**fields: object) -> bytes:
    return json.dumps({**GPT2, **fields}).encode()


def folder(tiny: TinyModel, **files: bytes) -> bytes:
    """A model folder one level deep: weights, a config and the given extra files."""
    base = {"config.json": config(), "model.safetensors": tiny.safetensors.read_bytes()}
    entries = {f"my_model/{name}": data for name, data in {**base, **files}.items()}
    return bytes(zip_bytes(entries))


def shard_index(shard: str) -> bytes:
    return json.dumps({"metadata": {}, "weight_map": {"transformer.wte.weight": shard}}).encode()


CASES: dict[str, tuple[dict[str, bytes], str]] = {
    "absurd n_embd": ({"config.json": config(n_embd=10**9)}, "config_invalid"),
    "absurd n_layer": ({"config.json": config(n_layer=10**8)}, "config_invalid"),
    "negative vocab": ({"config.json": config(vocab_size=-1)}, "config_invalid"),
    "float heads": ({"config.json": config(n_head=2.5)}, "config_invalid"),
    "config not json": ({"config.json": b"{model_type: gpt2"}, "config_invalid"),
    "config a list": ({"config.json": b"[1, 2]"}, "config_invalid"),
    "config duplicate key": (
        {"config.json": b'{"n_embd": 128, "n_embd": 99999}'},
        "config_invalid",
    ),
    "config not utf-8": ({"config.json": b'{"model_type": "\xff"}'}, "config_invalid"),
    "auto_map": (
        {
            "config.json": config(auto_map={"AutoModel": "modeling_x.Model"}),
            "modeling_x.py": b"import os\nos.system('touch /tmp/pwned')\n",
        },
        "config_custom_code",
    ),
    "weights disagree with config": (
        {"config.json": config(n_embd=256, n_head=4)},
        "config_weights_mismatch",
    ),
    "shard index outside the folder": (
        {"model.safetensors.index.json": shard_index("../../" + TARGET.name)},
        "shard_index_invalid",
    ),
    "shard index absolute": (
        {"model.safetensors.index.json": shard_index(str(TARGET))},
        "shard_index_invalid",
    ),
    "shard index not json": ({"model.safetensors.index.json": b"nope"}, "shard_index_invalid"),
    "tokenizer.json not json": ({"tokenizer.json": b"<html>not json</html>"}, "tokenizer_invalid"),
    "tokenizer.json without model": (
        {"tokenizer.json": b'{"version": "1.0"}'},
        "tokenizer_invalid",
    ),
    "vocab.json a list": (
        {"vocab.json": b'["a", "b"]', "merges.txt": b"#version: 0.2\na b\n"},
        "tokenizer_invalid",
    ),
    "vocab.json with string ids": (
        {"vocab.json": b'{"a": "0"}', "merges.txt": b"#version: 0.2\n"},
        "tokenizer_invalid",
    ),
    "merges.txt not utf-8": (
        {"vocab.json": b'{"a": 0}', "merges.txt": b"\xff\xfe"},
        "tokenizer_invalid",
    ),
}


@pytest.mark.parametrize(("files", "code"), CASES.values(), ids=list(CASES))
def test_hostile_folder_is_rejected_cleanly(
    server: LiveServer, client: httpx.Client, tiny: TinyModel, files: dict[str, bytes], code: str
) -> None:
    assert_upload_rejected(server, client, folder(tiny, **files), 422, code, absent=[TARGET])


def test_pickle_weights_beside_safetensors_are_ambiguous(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    data = folder(tiny, **{"pytorch_model.bin": tiny.state_dict_pt.read_bytes()})
    assert_upload_rejected(server, client, data, 422, "ambiguous_weights")


def test_pickle_weights_with_a_payload_never_run(
    server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    import torch

    canary = tmp_path / "pwned"
    weights = torch_bytes({"w": torch.zeros(2), "evil": hostile_payloads(canary)["os.system"]})
    entries = {"my_model/config.json": config(), "my_model/pytorch_model.bin": weights}
    data = bytes(zip_bytes(entries))
    assert_upload_rejected(server, client, data, 422, "torch_unsafe_pickle", absent=[canary])


def test_folder_without_weights(server: LiveServer, client: httpx.Client) -> None:
    data = bytes(zip_bytes({"my_model/config.json": config(), "my_model/README.md": b"hi"}))
    assert_upload_rejected(server, client, data, 422, "no_weights")


def test_config_sent_twice_is_a_conflict(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    before = Footprint.of(server, client)
    response = post_raw(client, folder(tiny), config=config().decode())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "config_conflict"
    assert_nothing_left(server, client, before)


def test_unicode_lookalike_dots_stay_inside(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    """'\u2025' and fullwidth dots are ordinary names: accepted, stored as members, nowhere else."""
    names = ["\u2025/x.txt", "\uff0e\uff0e/y.txt"]
    data = folder(tiny, **{name: b"lookalike" for name in names})
    before = Footprint.of(server, client)
    response = post_raw(client, data, name="lookalike")
    assert response.status_code == 201, response.text
    stored = {f["path"] for f in response.json()["files"]}
    assert set(names) <= stored
    assert Footprint.of(server, client).outside == before.outside
    for name in names:
        got = client.get(f"/v1/checkpoints/lookalike/files/{name}")
        assert got.status_code == 200 and got.content == b"lookalike"
    client.delete("/v1/checkpoints/lookalike").raise_for_status()
    assert_nothing_left(server, client, before)
