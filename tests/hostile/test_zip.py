"""Hostile zip archives over HTTP: traversal, links, bombs, floods, collisions, damage."""

from __future__ import annotations

import os
import stat
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.hostile.builders import (
    CENTRAL_SIZE,
    LOCAL_NAME,
    local_header,
    patch,
    patch_central,
    sharing_bytes,
    with_bad_crc,
    with_flags,
    with_method,
    with_unix_mode,
    zip_bytes,
)
from tests.hostile.invariants import assert_upload_rejected
from tests.live_server import LiveServer

MAX_ENTRIES = 32
SERVER_SETTINGS = {
    "max_upload_bytes": 16 << 20,
    "max_uncompressed_bytes": 4 << 20,
    "max_zip_entries": MAX_ENTRIES,
}
# Where a traversal would land if it escaped: must never exist.
TARGET = Path(tempfile.gettempdir()) / f"ckpt-hostile-{uuid.uuid4().hex}"
ESCAPE = "../" * 16 + TARGET.relative_to("/").as_posix()
CONFIG = b'{"model_type": "gpt2"}'


def named(*names: str) -> Callable[[], bytes]:
    return lambda: bytes(zip_bytes([("config.json", CONFIG), *((n, b"x") for n in names)]))


def patched(edit: Callable[[bytearray], bytearray], **entries: bytes) -> Callable[[], bytes]:
    return lambda: bytes(edit(zip_bytes({"config.json": CONFIG, **entries})))


def duplicates(*names: str) -> Callable[[], bytes]:
    def build() -> bytes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # zipfile warns about duplicate names
            return bytes(zip_bytes([(name, b"x") for name in names]))

    return build


def deflated(name: str, data: bytes) -> Callable[[], bytes]:
    return lambda: bytes(zip_bytes({name: data}, zipfile.ZIP_DEFLATED))


def lying_size() -> bytes:
    """An entry declaring 100 bytes whose deflate stream expands to 1 MiB of zeros."""
    data = zip_bytes({"config.json": CONFIG, "weights.bin": bytes(1 << 20)}, zipfile.ZIP_DEFLATED)
    patch(data, local_header(data, 1) + 22, "<L", 100)
    return bytes(patch_central(data, 1, CENTRAL_SIZE, "<L", 100))


def renamed_locally() -> bytes:
    data = zip_bytes({"config.json": CONFIG, "aaaa.txt": b"x"})
    data[local_header(data, 1) + LOCAL_NAME : local_header(data, 1) + LOCAL_NAME + 4] = b"../a"
    return bytes(data)


def damaged_deflate() -> bytes:
    data = zip_bytes({"w.bin": b"checkpoint weights " * 500}, zipfile.ZIP_DEFLATED)
    start = local_header(data, 0) + LOCAL_NAME + len("w.bin")
    data[start + 2 : start + 12] = b"\xff" * 10
    return bytes(data)


def flood() -> bytes:
    return bytes(zip_bytes([(f"f{i}.txt", b"x") for i in range(MAX_ENTRIES + 1)]))


def over_uncompressed_cap() -> bytes:
    return bytes(zip_bytes([(f"part{i}.bin", os.urandom(1 << 20)) for i in range(5)]))


def fake_local_header_first() -> bytes:
    return b"PK\x03\x04" + bytes(60) + bytes(zip_bytes({"config.json": CONFIG}))


def cut(fraction: float) -> Callable[[], bytes]:
    def build() -> bytes:
        data = zip_bytes({"config.json": CONFIG, "w.bin": os.urandom(4096)})
        return bytes(data[: int(len(data) * fraction)])

    return build


S_LINK, S_FIFO = stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644
CASES: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "dot-dot": (named("../evil.txt"), 422, "zip_path_traversal"),
    "dot-dot to target": (named(ESCAPE), 422, "zip_path_traversal"),
    "absolute": (named(str(TARGET)), 422, "zip_path_traversal"),
    "absolute etc": (named("/etc/ckpt-hostile"), 422, "zip_path_traversal"),
    "nested dot-dot": (named("a/../../x"), 422, "zip_path_traversal"),
    "dot-dot inside folder": (named("my_model/../../x"), 422, "zip_path_traversal"),
    "backslash dot-dot": (named("..\\evil.txt"), 422, "zip_path_traversal"),
    "backslash nested": (named("a\\..\\..\\evil"), 422, "zip_path_traversal"),
    "drive backslash": (named("C:\\evil.txt"), 422, "zip_path_traversal"),
    "drive slash": (named("C:/evil.txt"), 422, "zip_path_traversal"),
    "dot component": (named("./config2.json"), 422, "zip_bad_name"),
    "empty component": (named("a//b.txt"), 422, "zip_bad_name"),
    "NUL in name": (lambda: named("aZ.txt")().replace(b"aZ.txt", b"a\0.txt"), 422, "zip_bad_name"),
    "control in name": (named("a\n.txt"), 422, "zip_bad_name"),
    "long component": (named("n" * 300), 422, "zip_bad_name"),
    "local name differs": (renamed_locally, 422, "zip_name_mismatch"),
    "symlink": (patched(lambda d: with_unix_mode(d, 1, S_LINK), link=b"/etc"), 422, "zip_symlink"),
    "fifo": (
        patched(lambda d: with_unix_mode(d, 1, S_FIFO), pipe=b""),
        422,
        "zip_special_file",
    ),
    "overlapping entries": (
        patched(sharing_bytes, other=b"y" * 64),
        422,
        "zip_overlapping_entries",
    ),
    "ratio bomb": (deflated("model.safetensors", bytes(4 << 20)), 422, "zip_bomb"),
    "declared size lies": (lying_size, 422, "zip_corrupt"),
    "uncompressed cap": (over_uncompressed_cap, 413, "zip_too_large"),
    "entry flood": (flood, 422, "zip_too_many_entries"),
    "exact duplicate": (duplicates("a.txt", "a.txt"), 422, "zip_duplicate_name"),
    "case collision": (duplicates("Config.json", "config.json"), 422, "zip_duplicate_name"),
    "unicode collision": (
        duplicates("caf\u00e9.txt", "cafe\u0301.txt"),
        422,
        "zip_duplicate_name",
    ),
    "file and folder": (duplicates("a", "a/b.txt"), 422, "zip_duplicate_name"),
    "encrypted": (patched(lambda d: with_flags(d, 1, 0x01), s=b"x" * 20), 422, "zip_encrypted"),
    "strong encryption": (
        patched(lambda d: with_flags(d, 1, 0x40), s=b"x" * 20),
        422,
        "zip_encrypted",
    ),
    "patched data": (
        patched(lambda d: with_flags(d, 1, 0x20), s=b"x"),
        422,
        "zip_unsupported_method",
    ),
    "bzip2": (lambda: bytes(zip_bytes({"a.bin": b"x" * 100}, 12)), 422, "zip_unsupported_method"),
    "lzma": (lambda: bytes(zip_bytes({"a.bin": b"x" * 100}, 14)), 422, "zip_unsupported_method"),
    "aes": (patched(lambda d: with_method(d, 1, 99), s=b"x"), 422, "zip_unsupported_method"),
    "deflate64": (patched(lambda d: with_method(d, 1, 9), s=b"x"), 422, "zip_unsupported_method"),
    "truncated half": (cut(0.5), 422, "zip_corrupt"),
    "truncated end record": (cut(0.99), 422, "zip_corrupt"),
    "bad crc": (patched(lambda d: with_bad_crc(d, 1), w=b"weights" * 10), 422, "zip_corrupt"),
    "damaged deflate": (damaged_deflate, 422, "zip_corrupt"),
    "nested zip": (named("inner.zip"), 422, "zip_nested_archive"),
    "nested tarball": (named("my_model/weights.tar.gz"), 422, "zip_nested_archive"),
    "data after": (
        lambda: bytes(zip_bytes({"config.json": CONFIG})) + b"junk",
        422,
        "zip_trailing_data",
    ),
    "data before": (fake_local_header_first, 422, "zip_prepended_data"),
    "junk before": (
        lambda: b"junk" + bytes(zip_bytes({"config.json": CONFIG})),
        422,
        "unknown_format",
    ),
    "only folders and noise": (
        lambda: bytes(zip_bytes([("m/", b""), ("m/.DS_Store", b"x"), ("__MACOSX/._a", b"x")])),
        422,
        "zip_empty",
    ),
}


@pytest.mark.parametrize(("build", "status", "code"), CASES.values(), ids=list(CASES))
def test_hostile_zip_is_rejected_cleanly(
    server: LiveServer,
    client: httpx.Client,
    build: Callable[[], bytes],
    status: int,
    code: str,
) -> None:
    assert_upload_rejected(server, client, build(), status, code, absent=[TARGET])
