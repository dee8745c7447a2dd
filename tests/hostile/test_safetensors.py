"""Hostile safetensors files over HTTP, raw and as a multipart file part.

The case table is the parser's own (tests/ingest): here every case goes through a real server.
A file whose first bytes do not look like safetensors (length, then '{') is not recognised as
one at all, so it is rejected as an unknown format.
"""

from __future__ import annotations

import json
import struct

import httpx
import pytest

from app.ingest.spool import looks_like_safetensors
from tests.hostile.builders import entry, raw_file
from tests.hostile.invariants import assert_rejected, assert_upload_rejected
from tests.ingest.test_safetensors_format import hostile_cases
from tests.live_server import LiveServer

SERVER_SETTINGS = {"max_upload_bytes": 8 << 20}


def expected_code(data: bytes, code: str) -> str:
    return code if looks_like_safetensors(data[:64]) else "unknown_format"


PARSER_CASES = hostile_cases()
EXTRA_CASES = {
    "header beyond the file": (struct.pack("<Q", 4096) + b'{"a": 1}', "safetensors_truncated"),
    "header beyond the cap": (struct.pack("<Q", 200 << 20) + b"{}", "safetensors_header_too_large"),
    "header length 2**64-1": (b"\xff" * 8 + b"{}", "safetensors_header_too_large"),
    "shape product past 2**63": (
        raw_file({"w": entry("U8", [1 << 32, 1 << 31], 0, 1)}, b"x"),
        "safetensors_bad_shape",
    ),
    "offset past 2**63": (
        raw_file({"w": entry("U8", [1], 1 << 63, (1 << 63) + 1)}, b"x"),
        "safetensors_bad_offsets",
    ),
    "metadata list value": (
        raw_file({"__metadata__": {"k": ["v"]}, "w": entry("U8", [1], 0, 1)}, b"x"),
        "safetensors_bad_metadata",
    ),
    "metadata null value": (
        raw_file({"__metadata__": {"k": None}, "w": entry("U8", [1], 0, 1)}, b"x"),
        "safetensors_bad_metadata",
    ),
    "name with slash and dots": (
        raw_file({"../../etc/passwd\u0000": entry("U8", [1], 0, 1)}, b"x"),
        "safetensors_bad_name",
    ),
}


@pytest.mark.parametrize(
    ("data", "code"),
    [(data, code) for data, code, _fragment in PARSER_CASES.values()] + list(EXTRA_CASES.values()),
    ids=list(PARSER_CASES) + list(EXTRA_CASES),
)
def test_hostile_safetensors_is_rejected_cleanly(
    server: LiveServer, client: httpx.Client, data: bytes, code: str
) -> None:
    assert_upload_rejected(server, client, data, 422, expected_code(data, code))


@pytest.mark.parametrize("name", ["overlap", "numel overflow", "duplicate tensor"])
def test_same_rejection_as_a_multipart_file_part(
    server: LiveServer, client: httpx.Client, name: str
) -> None:
    data, code, _fragment = PARSER_CASES[name]

    def send() -> httpx.Response:
        files = {"file": ("model.safetensors", data, "application/octet-stream")}
        return client.post("/v1/checkpoints", files=files, data={"name": "hostile"})

    assert_rejected(server, client, send, 422, code)


def test_empty_upload_is_rejected(server: LiveServer, client: httpx.Client) -> None:
    assert_upload_rejected(server, client, b"", 422, "unknown_format")


def test_metadata_only_file_is_not_a_checkpoint(server: LiveServer, client: httpx.Client) -> None:
    data = raw_file(json.dumps({"__metadata__": {"format": "pt"}}).encode())
    message = assert_upload_rejected(server, client, data, 422, "no_weights")
    assert "tensor" in message
