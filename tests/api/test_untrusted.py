"""Hostile uploads: each gets a clear 4xx naming the problem and leaves nothing behind."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import TinyModel, blob_count, leftover_temp_files
from tests.live_server import LiveServer

SERVER_SETTINGS = {"max_upload_bytes": 5 << 20}


class _Canary:
    """Unpickling this would create a file; a safe loader must refuse the global."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, (f"touch {self.target}",))


def torch_zip_with_payload(canary: Path) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": _Canary(canary)}, buffer)
    return buffer.getvalue()


def safetensors_bytes(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def post_raw(client: httpx.Client, data: bytes, name: str = "hostile") -> httpx.Response:
    return client.post(
        "/v1/checkpoints",
        content=data,
        params={"name": name},
        headers={"Content-Type": "application/octet-stream"},
    )


def assert_rejected_cleanly(
    server: LiveServer, client: httpx.Client, response: httpx.Response, status: int, code: str
) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert len(error["message"]) > 10
    assert client.get("/v1/checkpoints", params={"name": "hostile"}).json()["items"] == []
    assert blob_count(server.data_dir) == 0
    assert leftover_temp_files(server.data_dir) == []
    assert client.get("/health").status_code == 200


def test_pickle_with_reduce_payload_is_refused_and_never_runs(
    server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    canary = tmp_path / "pwned"
    response = post_raw(client, torch_zip_with_payload(canary))
    assert_rejected_cleanly(server, client, response, 422, "torch_unsafe_pickle")
    assert not canary.exists()


def test_legacy_pickle_is_refused(server: LiveServer, client: httpx.Client, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    response = post_raw(client, pickle.dumps(_Canary(canary)))
    assert response.status_code == 422
    assert not canary.exists()
    assert_rejected_cleanly(server, client, response, 422, response.json()["error"]["code"])


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ({"../evil.txt": b"x", "config.json": b"{}"}, "zip_path_traversal"),
        ({"/etc/evil": b"x"}, "zip_path_traversal"),
        ({"a\\..\\evil": b"x"}, "zip_path_traversal"),
        ({"Config.json": b"{}", "config.json": b"{}"}, "zip_duplicate_name"),
        ({"config.json": b"{}", "inner.zip": b"PK\x03\x04"}, "zip_nested_archive"),
        ({"config.json": b'{"model_type": "gpt2"}'}, "no_weights"),
    ],
)
def test_bad_archives(
    server: LiveServer, client: httpx.Client, entries: dict[str, bytes], code: str
) -> None:
    assert_rejected_cleanly(server, client, post_raw(client, zip_bytes(entries)), 422, code)


def test_zip_bomb_ratio(server: LiveServer, client: httpx.Client) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.safetensors", b"\0" * (4 << 20))
    assert_rejected_cleanly(server, client, post_raw(client, buffer.getvalue()), 422, "zip_bomb")


def test_absurd_config_in_folder(server: LiveServer, client: httpx.Client, tiny: TinyModel) -> None:
    absurd = b'{"model_type": "gpt2", "n_layer": 100000000, "n_embd": 768, "n_head": 12}'
    data = zip_bytes({"config.json": absurd, "model.safetensors": tiny.safetensors.read_bytes()})
    assert_rejected_cleanly(server, client, post_raw(client, data), 422, "config_invalid")


def test_custom_code_config(server: LiveServer, client: httpx.Client, tiny: TinyModel) -> None:
    config = b'{"model_type": "gpt2", "auto_map": {"AutoModel": "evil.Model"}}'
    data = zip_bytes({"config.json": config, "model.safetensors": tiny.safetensors.read_bytes()})
    assert_rejected_cleanly(server, client, post_raw(client, data), 422, "config_custom_code")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (
            safetensors_bytes(
                b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', b"\0" * 4
            ),
            "safetensors_truncated",
        ),
        (
            safetensors_bytes(
                b'{"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4
            ),
            "safetensors_bad_dtype",
        ),
        (
            safetensors_bytes(
                b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
                b"\0" * 8,
            ),
            "safetensors_duplicate_key",
        ),
        (struct.pack("<Q", 1 << 40) + b"{}", "safetensors_header_too_large"),
    ],
)
def test_bad_safetensors(server: LiveServer, client: httpx.Client, data: bytes, code: str) -> None:
    assert_rejected_cleanly(server, client, post_raw(client, data), 422, code)


def test_unknown_bytes(server: LiveServer, client: httpx.Client) -> None:
    response = post_raw(client, b"this is not a model at all" * 10)
    assert_rejected_cleanly(server, client, response, 422, "unknown_format")


def test_oversized_upload_announced(server: LiveServer, client: httpx.Client) -> None:
    response = post_raw(client, b"\0" * ((5 << 20) + 1))
    assert_rejected_cleanly(server, client, response, 413, "upload_too_large")


def test_oversized_upload_streamed_without_length(server: LiveServer, client: httpx.Client) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(6):
            yield b"\0" * (1 << 20)

    response = client.post(
        "/v1/checkpoints",
        content=body(),
        params={"name": "hostile"},
        headers={"Content-Type": "application/octet-stream"},
    )
    assert_rejected_cleanly(server, client, response, 413, "upload_too_large")


def test_wrong_content_type(server: LiveServer, client: httpx.Client) -> None:
    response = client.post("/v1/checkpoints", json={"file": "x"}, params={"name": "hostile"})
    assert_rejected_cleanly(server, client, response, 415, "unsupported_media_type")


def test_multipart_without_file_part(server: LiveServer, client: httpx.Client) -> None:
    response = client.post(
        "/v1/checkpoints", data={"name": "hostile"}, files={"other": ("x", b"y")}
    )
    assert_rejected_cleanly(server, client, response, 400, "bad_multipart")
