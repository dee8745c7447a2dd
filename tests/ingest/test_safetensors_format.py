"""Strict safetensors parsing and single-pass hashing, on real files and hand-built hostile ones."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from app.errors import RejectedCheckpoint
from app.ingest import safetensors_format
from app.ingest.safetensors_format import (
    DTYPE_SIZES,
    DTYPE_TORCH_NAME,
    BlockWorker,
    SafetensorsHeader,
    SafetensorsStreamHasher,
    hash_safetensors_file,
    parse_header_bytes,
    read_header,
)
from app.ingest.types import IngestLimits
from tests.hostile.builders import entry, raw_file

LIMITS = IngestLimits()
EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def tensor_sha(tensor: torch.Tensor) -> str:
    return hashlib.sha256(
        tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    ).hexdigest()


def small_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "embed.weight": torch.randn(13, 7, generator=generator),
        "norm.bias": torch.zeros(0),
        "empty.int": torch.zeros(3, 0, dtype=torch.int64),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "mask": torch.tensor([True, False, True]),
        "half": torch.randn(5, generator=generator).to(torch.bfloat16),
        "ids": torch.arange(11, dtype=torch.int32),
        "bytes": torch.arange(3, dtype=torch.uint8),
    }


def large_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return {
        "big.a": torch.randn(300_000, generator=generator),  # spans 1 MB chunks
        "tiny": torch.ones(1, dtype=torch.float16),
        "zero": torch.zeros(0, 4),
        "big.b": torch.randn(700, 900, generator=generator).to(torch.float16),
    }


def save(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    save_file(tensors, str(path), metadata=metadata)
    return path


def stream_hash(
    data: bytes, chunk: int, total_size: int | None
) -> tuple[SafetensorsHeader, dict[str, str]]:
    hasher = SafetensorsStreamHasher(total_size, LIMITS)
    for start in range(0, len(data), chunk):
        hasher.update(data[start : start + chunk])
    return hasher.finish()


# --- valid files --------------------------------------------------------------------------------


def test_dtype_tables_agree_with_torch() -> None:
    assert DTYPE_SIZES.keys() == DTYPE_TORCH_NAME.keys()
    for code, name in DTYPE_TORCH_NAME.items():
        assert getattr(torch, name).itemsize == DTYPE_SIZES[code], code


def test_read_header_matches_the_safetensors_library(tmp_path: Path) -> None:
    path = save(tmp_path / "m.safetensors", small_tensors(), {"format": "pt", "note": "héllo"})
    header = read_header(path, LIMITS)
    assert header.metadata == {"format": "pt", "note": "héllo"}
    assert header.file_size == path.stat().st_size
    assert header.data_start == 8 + header.header_len
    assert [span.begin for span in header.tensors] == sorted(span.begin for span in header.tensors)
    with safe_open(str(path), framework="pt") as reference:
        assert {span.name for span in header.tensors} == set(reference.keys())
        for span in header.tensors:
            tensor = reference.get_tensor(span.name)
            assert span.shape == tuple(tensor.shape)
            assert span.numel == tensor.numel()
            assert DTYPE_TORCH_NAME[span.dtype] == str(tensor.dtype).removeprefix("torch.")


@pytest.mark.parametrize(
    ("chunk", "big"), [(1, False), (7, False), (4096, False), (1 << 20, True), (65_537, True)]
)
@pytest.mark.parametrize("known_size", [True, False])
def test_stream_hashes_equal_per_tensor_hashlib(
    tmp_path: Path, chunk: int, big: bool, known_size: bool
) -> None:
    tensors = large_tensors() if big else small_tensors()
    data = save(tmp_path / "m.safetensors", tensors).read_bytes()
    header, digests = stream_hash(data, chunk, len(data) if known_size else None)
    assert digests == {name: tensor_sha(tensor) for name, tensor in tensors.items()}
    assert EMPTY_SHA in digests.values()
    assert header.file_size == len(data)


def test_hash_safetensors_file_hashes_file_and_tensors(tmp_path: Path) -> None:
    tensors = large_tensors()
    path = save(tmp_path / "m.safetensors", tensors)
    file_sha, header, digests = hash_safetensors_file(path, LIMITS, chunk=100_003)
    assert file_sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert header == read_header(path, LIMITS)
    assert digests == {name: tensor_sha(tensor) for name, tensor in tensors.items()}


def test_metadata_only_file_parses_with_no_tensors() -> None:
    data = raw_file({"__metadata__": {"format": "pt"}})
    header, digests = stream_hash(data, 3, len(data))
    assert header.tensors == ()
    assert header.metadata == {"format": "pt"}
    assert digests == {}


def test_padded_header_is_accepted() -> None:
    data = raw_file(json.dumps({"a": entry("U8", [2], 0, 2)}).encode() + b"    ", b"xy")
    assert parse_header_bytes(data, len(data), LIMITS).tensors[0].end == 2


class CountingFile(io.FileIO):
    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        CountingFile.bytes_read += len(data)
        return data


def test_read_header_never_reads_tensor_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 500 << 20
    header = json.dumps({"w": entry("U8", [size], 0, size)}).encode()
    path = tmp_path / "sparse.safetensors"
    path.write_bytes(raw_file(header))
    with path.open("r+b") as file:
        file.truncate(8 + len(header) + size)
    CountingFile.bytes_read = 0
    monkeypatch.setattr(safetensors_format, "open", CountingFile, raising=False)
    assert read_header(path, LIMITS).data_len == size
    assert CountingFile.bytes_read == 8 + len(header)


# --- hostile files ----------------------------------------------------------------------------

BadCase = tuple[bytes, str, str]


def hostile_cases() -> dict[str, BadCase]:
    ok = entry("F32", [2], 0, 8)
    return {
        "empty file": (b"", "safetensors_truncated", "8 bytes"),
        "short prefix": (b"\x05\0\0", "safetensors_truncated", "8 bytes"),
        "zero header length": (struct.pack("<Q", 0), "safetensors_bad_header", "length is 0"),
        "header past end": (struct.pack("<Q", 100) + b"{}", "safetensors_truncated", "100 bytes"),
        "huge header": (
            struct.pack("<Q", 1 << 40) + b"{}",
            "safetensors_header_too_large",
            "limit",
        ),
        "not utf-8": (raw_file(b'{"\xff": 1}'), "safetensors_bad_json", "UTF-8"),
        "not json": (raw_file(b'{"a": '), "safetensors_bad_json", "not valid JSON"),
        "nan": (
            raw_file(b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}'),
            "safetensors_bad_json",
            "NaN",
        ),
        "deep nesting": (
            raw_file(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
            "safetensors_bad_json",
            "nested",
        ),
        "leading space": (raw_file(b' {"a": 1}'), "safetensors_bad_header", "'{'"),
        "top-level array": (raw_file(b"[1, 2]"), "safetensors_bad_header", "'{'"),
        "duplicate tensor": (
            raw_file(
                b'{"a": ' + json.dumps(ok).encode() + b', "a": ' + json.dumps(ok).encode() + b"}",
                bytes(8),
            ),
            "safetensors_duplicate_key",
            "'a'",
        ),
        "duplicate in entry": (
            raw_file(
                b'{"a": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                bytes(8),
            ),
            "safetensors_duplicate_key",
            "'dtype'",
        ),
        "metadata not object": (
            raw_file({"__metadata__": ["x"]}),
            "safetensors_bad_metadata",
            "__metadata__",
        ),
        "metadata int value": (
            raw_file({"__metadata__": {"epoch": 3}}),
            "safetensors_bad_metadata",
            "'epoch'",
        ),
        "metadata surrogate": (
            raw_file(b'{"__metadata__": {"k": "\\ud800"}}'),
            "safetensors_bad_metadata",
            "'k'",
        ),
        "metadata NUL": (
            raw_file(b'{"__metadata__": {"k": "a\\u0000b"}}'),
            "safetensors_bad_metadata",
            "'k'",
        ),
        "empty name": (
            raw_file({"": entry("U8", [1], 0, 1)}, b"x"),
            "safetensors_bad_name",
            "empty name",
        ),
        "NUL in name": (
            raw_file({"a\0b": entry("U8", [1], 0, 1)}, b"x"),
            "safetensors_bad_name",
            "'a\\x00b'",
        ),
        "newline in name": (
            raw_file({"a\nb": entry("U8", [1], 0, 1)}, b"x"),
            "safetensors_bad_name",
            "control",
        ),
        "long name": (
            raw_file({"n" * 1025: entry("U8", [1], 0, 1)}, b"x"),
            "safetensors_bad_name",
            "longer than 1024",
        ),
        "surrogate name": (
            raw_file(b'{"\\udc00": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}', b"x"),
            "safetensors_bad_name",
            "invalid characters",
        ),
        "entry not object": (raw_file({"w": [1, 2]}), "safetensors_bad_header", "'w'"),
        "missing key": (
            raw_file({"w": {"dtype": "U8", "shape": [1]}}, b"x"),
            "safetensors_bad_header",
            "'w'",
        ),
        "extra key": (
            raw_file({"w": {**entry("U8", [1], 0, 1), "x": 1}}, b"x"),
            "safetensors_bad_header",
            "'x'",
        ),
        "unknown dtype": (
            raw_file({"w": entry("Q9", [1], 0, 4)}, bytes(4)),
            "safetensors_bad_dtype",
            "'Q9'",
        ),
        "sub-byte dtype": (
            raw_file({"w": entry("F4", [2], 0, 1)}, bytes(1)),
            "safetensors_bad_dtype",
            "'F4'",
        ),
        "dtype not string": (
            raw_file({"w": entry(4, [1], 0, 4)}, bytes(4)),
            "safetensors_bad_dtype",
            "'w'",
        ),
        "shape not list": (
            raw_file({"w": {"dtype": "U8", "shape": 4, "data_offsets": [0, 4]}}, bytes(4)),
            "safetensors_bad_shape",
            "'w'",
        ),
        "negative dim": (raw_file({"w": entry("U8", [-1], 0, 0)}), "safetensors_bad_shape", "-1"),
        "float dim": (
            raw_file({"w": entry("U8", [2.0], 0, 2)}, bytes(2)),
            "safetensors_bad_shape",
            "2.0",
        ),
        "bool dim": (
            raw_file({"w": entry("U8", [True], 0, 1)}, bytes(1)),
            "safetensors_bad_shape",
            "True",
        ),
        "string dim": (
            raw_file({"w": entry("U8", ["2"], 0, 2)}, bytes(2)),
            "safetensors_bad_shape",
            "'2'",
        ),
        "too many dims": (
            raw_file({"w": entry("U8", [1] * 65, 0, 1)}, bytes(1)),
            "safetensors_bad_shape",
            "65 dimensions",
        ),
        "numel overflow": (
            raw_file({"w": entry("F32", [1 << 40, 1 << 40], 0, 4)}, bytes(4)),
            "safetensors_bad_shape",
            "overflows",
        ),
        "one offset": (
            raw_file({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0]}}, bytes(1)),
            "safetensors_bad_offsets",
            "two integers",
        ),
        "float offset": (
            raw_file({"w": entry("U8", [1], 0, 1.0)}, bytes(1)),
            "safetensors_bad_offsets",
            "two integers",
        ),
        "bool offset": (
            raw_file({"w": entry("U8", [1], False, 1)}, bytes(1)),
            "safetensors_bad_offsets",
            "two integers",
        ),
        "reversed offsets": (
            raw_file({"w": entry("U8", [0], 4, 0)}, bytes(4)),
            "safetensors_bad_offsets",
            "out of order",
        ),
        "size mismatch": (
            raw_file({"w": entry("F32", [2], 0, 4)}, bytes(4)),
            "safetensors_bad_offsets",
            "needs 8 bytes",
        ),
        "overlap": (
            raw_file({"a": entry("U8", [8], 0, 8), "b": entry("U8", [8], 4, 12)}, bytes(12)),
            "safetensors_bad_offsets",
            "'b' overlaps tensor 'a'",
        ),
        "zero-size inside other": (
            raw_file({"a": entry("U8", [8], 0, 8), "b": entry("U8", [0], 4, 4)}, bytes(8)),
            "safetensors_bad_offsets",
            "'b' overlaps",
        ),
        "gap": (
            raw_file({"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 8, 12)}, bytes(12)),
            "safetensors_bad_offsets",
            "bytes 4..8 before tensor 'b'",
        ),
        "not from zero": (
            raw_file({"a": entry("U8", [4], 4, 8)}, bytes(8)),
            "safetensors_bad_offsets",
            "bytes 0..4",
        ),
        "trailing bytes": (
            raw_file({"a": entry("U8", [4], 0, 4)}, bytes(9)),
            "safetensors_trailing_bytes",
            "5 bytes",
        ),
        "metadata-only with data": (
            raw_file({"__metadata__": {}}, b"x"),
            "safetensors_trailing_bytes",
            "1 bytes",
        ),
        "truncated data": (
            raw_file({"a": entry("F32", [2], 0, 8)}, bytes(4)),
            "safetensors_truncated",
            "'a'",
        ),
    }


@pytest.mark.parametrize(
    ("data", "code", "fragment"), hostile_cases().values(), ids=list(hostile_cases())
)
def test_parse_rejects(data: bytes, code: str, fragment: str) -> None:
    with pytest.raises(RejectedCheckpoint) as caught:
        parse_header_bytes(data, len(data), LIMITS)
    assert caught.value.code == code
    assert fragment in caught.value.message
    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("data", "code", "fragment"), hostile_cases().values(), ids=list(hostile_cases())
)
@pytest.mark.parametrize("known_size", [True, False])
def test_stream_rejects_the_same(data: bytes, code: str, fragment: str, known_size: bool) -> None:
    with pytest.raises(RejectedCheckpoint) as caught:
        stream_hash(data, 5, len(data) if known_size else None)
    assert caught.value.code == code


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        (IngestLimits(max_tensors=2), "safetensors_too_many_tensors"),
        (IngestLimits(max_header_bytes=64), "safetensors_header_too_large"),
    ],
)
def test_limits_are_enforced(tmp_path: Path, limits: IngestLimits, code: str) -> None:
    path = save(tmp_path / "m.safetensors", small_tensors())
    with pytest.raises(RejectedCheckpoint) as caught:
        read_header(path, limits)
    assert caught.value.code == code
    assert "limit" in caught.value.message


def test_stream_rejects_bad_header_before_the_data_arrives() -> None:
    header = json.dumps({"w": entry("Q9", [4], 0, 4)}).encode()
    hasher = SafetensorsStreamHasher(None, LIMITS)
    hasher.update(struct.pack("<Q", len(header)))
    with pytest.raises(RejectedCheckpoint) as caught:
        hasher.update(header)
    assert caught.value.code == "safetensors_bad_dtype"


def test_stream_rejects_oversized_header_from_its_length_alone() -> None:
    hasher = SafetensorsStreamHasher(None, IngestLimits(max_header_bytes=1000))
    with pytest.raises(RejectedCheckpoint) as caught:
        hasher.update(struct.pack("<Q", 1001))
    assert caught.value.code == "safetensors_header_too_large"


@pytest.mark.parametrize(
    ("cut", "fragment"),
    [
        (lambda n: 4, "inside the header"),
        (lambda n: 30, "inside the header"),
        (lambda n: n - 3, "3 bytes short"),
    ],
)
def test_stream_detects_missing_bytes_at_finish(cut: Callable[[int], int], fragment: str) -> None:
    data = raw_file({"a": entry("U8", [6], 0, 6)}, b"abcdef")
    hasher = SafetensorsStreamHasher(None, LIMITS)
    hasher.update(data[: cut(len(data))])
    with pytest.raises(RejectedCheckpoint) as caught:
        hasher.finish()
    assert caught.value.code == "safetensors_truncated"
    assert fragment in caught.value.message


def test_stream_rejects_bytes_past_the_last_tensor_as_they_arrive() -> None:
    data = raw_file({"a": entry("U8", [2], 0, 2)}, b"ab")
    hasher = SafetensorsStreamHasher(None, LIMITS)
    hasher.update(data)
    with pytest.raises(RejectedCheckpoint) as caught:
        hasher.update(b"!")
    assert caught.value.code == "safetensors_trailing_bytes"


def test_messages_shorten_huge_names() -> None:
    data = raw_file({"\x01" + "n" * 1000: entry("U8", [1], 0, 1)}, b"x")
    with pytest.raises(RejectedCheckpoint) as caught:
        parse_header_bytes(data, len(data), LIMITS)
    assert len(caught.value.message) < 200


# --- the helper thread ------------------------------------------------------------------------


@pytest.mark.parametrize("offload", [True, False])
def test_block_worker_consumes_every_block_in_order(offload: bool) -> None:
    seen: list[bytes] = []
    with BlockWorker(seen.append, offload=offload, max_pending=2) as worker:
        for index in range(50):
            worker.submit(bytes([index]))
        worker.finish()
    assert seen == [bytes([index]) for index in range(50)]


def test_block_worker_hands_its_error_to_the_producer() -> None:
    def fail_on_third(block: bytes) -> None:
        if block == b"3":
            raise OSError("disk gone")

    with (
        pytest.raises(OSError, match="disk gone"),
        BlockWorker(fail_on_third, max_pending=1) as worker,
    ):
        for index in range(1000):
            worker.submit(str(index).encode())
        worker.finish()
    assert not any(thread.name == "block-worker" for thread in threading.enumerate())


def test_block_worker_thread_ends_when_the_producer_fails() -> None:
    with pytest.raises(RuntimeError), BlockWorker(lambda block: None) as worker:
        worker.submit(b"x")
        raise RuntimeError("producer failed")
    assert not any(thread.name == "block-worker" for thread in threading.enumerate())
