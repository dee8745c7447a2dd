"""Hardened zip handling: every archive is built here, hostile ones by byte surgery."""

from __future__ import annotations

import errno
import hashlib
import io
import shutil
import stat
import struct
import subprocess
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.errors import InsufficientStorage, PayloadTooLarge, RejectedCheckpoint
from app.ingest import archive_extract, archive_scan
from app.ingest.archive_extract import ExtractedFile, extract_zip
from app.ingest.archive_scan import ZipMember, ZipPlan, scan_zip
from app.ingest.safetensors_format import hash_safetensors_file
from app.ingest.types import IngestLimits
from tests.hostile.builders import (
    CENTRAL_COMPRESSED,
    CENTRAL_EXTERNAL_ATTR,
    CENTRAL_FLAGS,
    CENTRAL_OFFSET,
    CENTRAL_SIZE,
    END_CD_OFFSET,
    END_CD_SIZE,
    END_COUNT,
    END_COUNT_HERE,
    END_DISK,
    LOCAL_FLAGS,
    LOCAL_NAME,
    central_records,
    end_record,
    local_header,
    patch,
    patch_central,
    zip_bytes,
)

LIMITS = IngestLimits()


def write(tmp_path: Path, data: bytes | bytearray, name: str = "upload.zip") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def reject(path: Path, limits: IngestLimits = LIMITS) -> RejectedCheckpoint:
    with pytest.raises(RejectedCheckpoint) as caught:
        scan_zip(path, limits)
    assert caught.value.status == 422
    return caught.value


def safetensors_file(path: Path, seed: int = 0) -> dict[str, str]:
    """Writes a small safetensors file; returns the expected tensor hashes."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "w": torch.randn(64, 33, generator=generator),
        "b": torch.zeros(0),
        "i": torch.arange(10, dtype=torch.int64),
    }
    save_file(tensors, str(path))
    return {
        name: hashlib.sha256(
            t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        ).hexdigest()
        for name, t in tensors.items()
    }


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()}


# --- planning: folder stripping, noise, kinds -------------------------------------------------


def test_plan_strips_the_common_folder_and_skips_noise(tmp_path: Path) -> None:
    data = zip_bytes(
        [
            ("my_model/", b""),
            ("my_model/config.json", b"{}"),
            ("my_model/sub/", b""),
            ("my_model/sub/tokenizer.json", b"{}"),
            ("my_model/.DS_Store", b"junk"),
            ("my_model/._config.json", b"junk"),
            ("__MACOSX/", b""),
            ("__MACOSX/my_model/._config.json", b"junk"),
            ("Thumbs.db", b"junk"),
        ]
    )
    plan = scan_zip(write(tmp_path, data), LIMITS)
    assert plan.kind == "folder"
    assert plan.top_folder == "my_model"
    assert [(m.name_in_zip, m.path) for m in plan.members] == [
        ("my_model/config.json", "config.json"),
        ("my_model/sub/tokenizer.json", "sub/tokenizer.json"),
    ]
    assert plan.total_size == 4


@pytest.mark.parametrize(
    "names",
    [
        ["config.json", "sub/x.json"],
        ["a/config.json", "b/x.json"],
        ["model.safetensors"],
    ],
)
def test_plan_keeps_paths_without_a_single_common_folder(tmp_path: Path, names: list[str]) -> None:
    plan = scan_zip(write(tmp_path, zip_bytes({name: b"1" for name in names})), LIMITS)
    assert [m.path for m in plan.members] == names
    assert plan.top_folder == ""


def test_torch_save_zip_is_classified_as_torch(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(3), "b": torch.zeros(2)}, path)
    plan = scan_zip(path, LIMITS)
    assert plan.kind == "torch"
    assert "data.pkl" in {m.path for m in plan.members}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_zip_is_classified_as_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    assert scan_zip(path, LIMITS).kind == "torchscript"


@pytest.mark.skipif(shutil.which("zip") is None, reason="needs the zip command")
def test_archive_made_by_the_zip_command_is_accepted(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "my_model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "sub" / "notes.txt").write_text("hello " * 1000)
    (folder / ".DS_Store").write_bytes(b"junk")
    subprocess.run(
        ["zip", "-qr", str(tmp_path / "m.zip"), "my_model"], cwd=folder.parent, check=True
    )
    plan = scan_zip(tmp_path / "m.zip", LIMITS)
    assert sorted(m.path for m in plan.members) == ["config.json", "sub/notes.txt"]


def test_zip64_end_records_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)  # makes zipfile write zip64 records
    data = zip_bytes({"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"})
    monkeypatch.undo()
    assert b"PK\x06\x06" in data
    # Real zip64 writers leave only placeholders in the classic end record.
    for field, fmt, placeholder in [
        (END_COUNT_HERE, "<H", 0xFFFF),
        (END_COUNT, "<H", 0xFFFF),
        (END_CD_SIZE, "<L", 0xFFFFFFFF),
        (END_CD_OFFSET, "<L", 0xFFFFFFFF),
    ]:
        patch(data, end_record(data) + field, fmt, placeholder)
    path = write(tmp_path, data)
    assert [m.path for m in scan_zip(path, LIMITS).members] == ["a.txt", "b.txt", "c.txt"]
    error = reject(path, IngestLimits(max_zip_entries=2))
    assert error.code == "zip_too_many_entries"


# --- extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("offload", [True, False])
def test_extract_writes_every_member_with_hashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: int, offload: bool
) -> None:
    monkeypatch.setattr(archive_extract, "EXTRACT_BLOCK_SIZE", 1000)  # many blocks per member
    monkeypatch.setattr(archive_extract, "OFFLOAD_MIN_BYTES", 0 if offload else 1 << 62)
    weights = tmp_path / "model.safetensors"
    expected_tensors = safetensors_file(weights)
    contents = {
        "m/model.safetensors": weights.read_bytes(),
        "m/config.json": b'{"model_type": "gpt2"}',
        "m/sub/empty.txt": b"",
        "m/__MACOSX/._x": b"noise",
    }
    path = write(tmp_path, zip_bytes(contents, compression))
    plan = scan_zip(path, LIMITS)
    dest = tmp_path / "dest"
    dest.mkdir()
    seen: list[ExtractedFile] = []
    extracted = extract_zip(path, plan, dest, LIMITS, on_file=seen.append)

    assert seen == extracted
    assert [e.path for e in extracted] == ["model.safetensors", "config.json", "sub/empty.txt"]
    for item in extracted:
        data = contents[f"m/{item.path}"]
        assert (dest / item.path).read_bytes() == data
        assert item.sha256 == hashlib.sha256(data).hexdigest()
        assert item.size == len(data)
    assert extracted[0].safetensors is not None
    header, tensor_hashes = extracted[0].safetensors
    assert tensor_hashes == expected_tensors
    assert (extracted[0].sha256, header, tensor_hashes) == hash_safetensors_file(weights, LIMITS)
    assert extracted[1].safetensors is None
    assert files_under(tmp_path) == {"upload.zip", "model.safetensors"} | {
        f"dest/{e.path}" for e in extracted
    }


class FullDisk(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("offload", [True, False])
def test_a_full_disk_is_reported_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offload: bool
) -> None:
    monkeypatch.setattr(archive_extract, "EXTRACT_BLOCK_SIZE", 100)
    monkeypatch.setattr(archive_extract, "OFFLOAD_MIN_BYTES", 0 if offload else 1 << 62)
    monkeypatch.setattr(archive_extract, "_create_target", lambda root, relative: FullDisk())
    path = write(tmp_path, zip_bytes({"a.bin": bytes(range(256)) * 10}))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(InsufficientStorage):
        extract_zip(path, scan_zip(path, LIMITS), dest, LIMITS)


def test_extract_refuses_a_destination_that_is_not_empty(tmp_path: Path) -> None:
    path = write(tmp_path, zip_bytes({"a.txt": b"a"}))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old").write_text("x")
    with pytest.raises(ValueError, match="empty"):
        extract_zip(path, scan_zip(path, LIMITS), dest, LIMITS)


def test_extract_rechecks_paths_against_the_destination(tmp_path: Path) -> None:
    path = write(tmp_path, zip_bytes({"a.txt": b"a"}))
    forged = ZipPlan(
        (ZipMember("a.txt", "sub/../../evil.txt", 1, 1, zlib.crc32(b"a"), 0),), "folder"
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(RejectedCheckpoint) as caught:
        extract_zip(path, forged, dest, LIMITS)
    assert caught.value.code == "zip_path_traversal"
    assert not (tmp_path / "evil.txt").exists()
    assert files_under(tmp_path) == {"upload.zip"}


def test_extract_detects_a_bad_crc(tmp_path: Path) -> None:
    data = zip_bytes({"m/config.json": b"{}", "m/weights.bin": b"A" * 5000})
    start = local_header(data, 1) + LOCAL_NAME + len("m/weights.bin")
    data[start + 100] ^= 0xFF
    path = write(tmp_path, data)
    plan = scan_zip(path, LIMITS)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(RejectedCheckpoint) as caught:
        extract_zip(path, plan, dest, LIMITS)
    assert caught.value.code == "zip_corrupt"
    assert "m/weights.bin" in caught.value.message
    assert files_under(tmp_path) <= {"upload.zip", "dest/config.json", "dest/weights.bin"}


def test_extract_detects_a_damaged_deflate_stream(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 200
    data = zip_bytes({"weights.bin": payload}, zipfile.ZIP_DEFLATED)
    start = local_header(data, 0) + LOCAL_NAME + len("weights.bin")
    data[start : start + 40] = b"\xff" * 40
    path = write(tmp_path, data)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(RejectedCheckpoint) as caught:
        extract_zip(path, scan_zip(path, LIMITS), dest, LIMITS)
    assert caught.value.code == "zip_corrupt"
    assert "weights.bin" in caught.value.message


def test_extract_detects_a_member_shorter_than_declared(tmp_path: Path) -> None:
    payload = b"hello world " * 100
    data = zip_bytes({"notes.txt": payload}, zipfile.ZIP_DEFLATED)
    patch_central(data, 0, CENTRAL_SIZE, "<L", len(payload) + 50)
    path = write(tmp_path, data)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(RejectedCheckpoint) as caught:
        extract_zip(path, scan_zip(path, LIMITS), dest, LIMITS)
    assert caught.value.code == "zip_corrupt"
    assert "notes.txt" in caught.value.message


def test_extract_rejects_a_hostile_safetensors_member_by_name(tmp_path: Path) -> None:
    header = b'{"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}'
    member = struct.pack("<Q", len(header)) + header + bytes(4)
    path = write(tmp_path, zip_bytes({"m/config.json": b"{}", "m/model.safetensors": member}))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(RejectedCheckpoint) as caught:
        extract_zip(path, scan_zip(path, LIMITS), dest, LIMITS)
    assert caught.value.code == "safetensors_bad_dtype"
    assert caught.value.message.startswith("model.safetensors: ")
    assert "'Q9'" in caught.value.message


# --- rejected before extraction: names and entry types --------------------------------------


@pytest.mark.parametrize(
    ("name", "code", "fragment"),
    [
        ("../evil.txt", "zip_path_traversal", "'..'"),
        ("a/../../evil.txt", "zip_path_traversal", "'..'"),
        ("/etc/evil", "zip_path_traversal", "absolute"),
        ("C:/evil.txt", "zip_path_traversal", "absolute"),
        ("a\\..\\evil", "zip_path_traversal", "backslash"),
        ("a//b.txt", "zip_bad_name", "empty or '.'"),
        ("./a.txt", "zip_bad_name", "empty or '.'"),
        ("a\x01b.txt", "zip_bad_name", "control"),
        ("a\x7fb.txt", "zip_bad_name", "control"),
        ("x" * 1025, "zip_bad_name", "longer than 1024"),
        ("d/" + "x" * 256, "zip_bad_name", "255 bytes"),
        ("weights.zip", "zip_nested_archive", "'weights.zip'"),
        ("m/data.tar.gz", "zip_nested_archive", "'m/data.tar.gz'"),
        ("Backup.7Z", "zip_nested_archive", "'Backup.7Z'"),
    ],
)
def test_bad_names_are_rejected(tmp_path: Path, name: str, code: str, fragment: str) -> None:
    error = reject(write(tmp_path, zip_bytes({"config.json": b"{}", name: b"x"})))
    assert error.code == code
    assert fragment in error.message


def test_nul_in_a_name_is_rejected(tmp_path: Path) -> None:
    data = zip_bytes({"aXb.txt": b"x"})
    data[:] = data.replace(b"aXb.txt", b"a\0b.txt")  # zipfile itself would cut the name at NUL
    error = reject(write(tmp_path, data))
    assert error.code == "zip_bad_name"
    assert "'a\\x00b.txt'" in error.message


def test_empty_name_is_rejected(tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"a", "Z": b"x"})
    # zipfile cannot write an empty name: turn the 1-byte name "Z" into a 1-byte extra field.
    patch(data, local_header(data, 1) + 26, "<H", 0)
    patch(data, local_header(data, 1) + 28, "<H", 1)
    patch(data, central_records(data)[1] + 28, "<H", 0)
    patch(data, central_records(data)[1] + 30, "<H", 1)
    error = reject(write(tmp_path, data))
    assert error.code == "zip_bad_name"
    assert "empty name" in error.message


@pytest.mark.parametrize(
    ("mode", "code"),
    [(stat.S_IFLNK | 0o777, "zip_symlink"), (stat.S_IFIFO | 0o644, "zip_special_file")],
)
def test_links_and_special_files_are_rejected(tmp_path: Path, mode: int, code: str) -> None:
    data = zip_bytes({"config.json": b"{}", "link": b"/etc/passwd"})
    patch_central(data, 1, CENTRAL_EXTERNAL_ATTR, "<L", mode << 16)
    error = reject(write(tmp_path, data))
    assert error.code == code
    assert "'link'" in error.message


@pytest.mark.parametrize("flag", [0x01, 0x40])
def test_encrypted_entries_are_rejected(tmp_path: Path, flag: int) -> None:
    data = zip_bytes({"config.json": b"{}", "secret.bin": b"x" * 20})
    patch_central(data, 1, CENTRAL_FLAGS, "<H", flag)
    patch(data, local_header(data, 1) + LOCAL_FLAGS, "<H", flag)
    error = reject(write(tmp_path, data))
    assert error.code == "zip_encrypted"
    assert "'secret.bin'" in error.message


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_other_compression_methods_are_rejected(tmp_path: Path, method: int) -> None:
    error = reject(write(tmp_path, zip_bytes({"a.bin": b"x" * 100}, method)))
    assert error.code == "zip_unsupported_method"
    assert "'a.bin'" in error.message and f"method {method}" in error.message


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        (["a.txt", "a.txt"], "'a.txt' appears twice"),
        (["Config.json", "config.json"], "differ only in case"),
        (["m/Config.json", "m/sub/x", "m/config.json"], "'Config.json' and 'config.json'"),
        (["caf\u00e9.txt", "cafe\u0301.txt"], "differ only in case"),
        (["a", "a/b.txt"], "'a' is both a file and a folder"),
        (["A", "a/b.txt"], "both a file and a folder"),
    ],
)
def test_duplicate_names_are_rejected(tmp_path: Path, names: list[str], fragment: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about duplicate names
        data = zip_bytes([(name, b"x") for name in names])
    error = reject(write(tmp_path, data))
    assert error.code == "zip_duplicate_name"
    assert fragment in error.message


def test_archive_without_files_is_rejected(tmp_path: Path) -> None:
    error = reject(write(tmp_path, zip_bytes([("m/", b""), ("m/.DS_Store", b"x")])))
    assert error.code == "zip_empty"


# --- rejected before extraction: sizes -------------------------------------------------------


def test_high_ratio_entry_is_a_bomb(tmp_path: Path) -> None:
    data = zip_bytes({"model.safetensors": bytes(4 << 20)}, zipfile.ZIP_DEFLATED)
    error = reject(write(tmp_path, data))
    assert error.code == "zip_bomb"
    assert "'model.safetensors'" in error.message


def test_high_ratio_is_fine_below_the_size_threshold(tmp_path: Path) -> None:
    data = zip_bytes({"zeros.bin": bytes(512 << 10)}, zipfile.ZIP_DEFLATED)
    assert scan_zip(write(tmp_path, data), LIMITS).members[0].size == 512 << 10


def test_total_uncompressed_size_is_capped(tmp_path: Path) -> None:
    path = write(tmp_path, zip_bytes({"a.bin": bytes(600), "b.bin": bytes(600)}))
    with pytest.raises(PayloadTooLarge) as caught:
        scan_zip(path, IngestLimits(max_uncompressed_bytes=1000))
    assert caught.value.code == "zip_too_large"
    assert "1200" in caught.value.message


def test_entry_count_is_checked_before_zipfile_parses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, zip_bytes({f"f{i}.txt": b"x" for i in range(5)}))

    def must_not_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("zipfile parsed the archive before the entry count was checked")

    monkeypatch.setattr(zipfile, "ZipFile", must_not_parse)
    error = reject(path, IngestLimits(max_zip_entries=4))
    assert error.code == "zip_too_many_entries"
    assert "5 entries" in error.message


def test_absurd_central_directory_size_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, zip_bytes({"a.txt": b"a"}))
    monkeypatch.setattr(archive_scan, "MAX_CENTRAL_DIRECTORY_BYTES", 40)
    assert reject(path).code == "zip_central_directory_too_large"


def test_central_directory_too_small_for_its_entries(tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"a", "b.txt": b"b"})
    patch(data, end_record(data) + END_CD_SIZE, "<L", 50)
    error = reject(write(tmp_path, data))
    assert error.code == "zip_corrupt"
    assert "cannot hold 2 entries" in error.message


def test_entry_count_disagreeing_with_the_directory_is_corrupt(tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"a", "b.txt": b"b"})
    patch(data, end_record(data) + END_COUNT_HERE, "<H", 1)
    patch(data, end_record(data) + END_COUNT, "<H", 1)
    error = reject(write(tmp_path, data))
    assert error.code == "zip_corrupt"
    assert "declares 1 entries but lists 2" in error.message


def test_stored_entry_with_inconsistent_sizes_is_corrupt(tmp_path: Path) -> None:
    data = zip_bytes({"a.bin": b"x" * 100})
    patch_central(data, 0, CENTRAL_COMPRESSED, "<L", 90)
    error = reject(write(tmp_path, data))
    assert error.code == "zip_corrupt"
    assert "'a.bin'" in error.message


# --- rejected before extraction: layout -------------------------------------------------------


def test_entries_sharing_bytes_are_rejected(tmp_path: Path) -> None:
    data = zip_bytes({"a.bin": b"A" * 100, "b.bin": b"A" * 100})
    patch_central(data, 1, CENTRAL_OFFSET, "<L", local_header(data, 0))
    error = reject(write(tmp_path, data))
    assert error.code == "zip_overlapping_entries"
    assert "'b.bin'" in error.message and "'a.bin'" in error.message


def test_entry_running_into_the_central_directory_is_rejected(tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"hello " * 50}, zipfile.ZIP_DEFLATED)
    (compressed,) = struct.unpack_from("<L", data, central_records(data)[0] + CENTRAL_COMPRESSED)
    patch_central(data, 0, CENTRAL_COMPRESSED, "<L", compressed + 20)
    error = reject(write(tmp_path, data))
    assert error.code == "zip_overlapping_entries"
    assert "central directory" in error.message


def test_local_name_must_match_the_central_directory(tmp_path: Path) -> None:
    data = zip_bytes({"config.json": b"{}", "model.bin": b"x"})
    name_at = local_header(data, 1) + LOCAL_NAME
    data[name_at : name_at + 9] = b"evil1.bin"
    error = reject(write(tmp_path, data))
    assert error.code == "zip_name_mismatch"
    assert "'model.bin'" in error.message and "'evil1.bin'" in error.message


def test_prepended_data_is_rejected(tmp_path: Path) -> None:
    error = reject(write(tmp_path, b"#!/bin/sh\necho hi\n" + zip_bytes({"a.txt": b"a"})))
    assert error.code == "zip_prepended_data"


def test_data_before_the_first_entry_is_rejected_even_with_fixed_offsets(tmp_path: Path) -> None:
    junk = 100
    data = bytearray(bytes(junk)) + zip_bytes({"a.txt": b"a", "b.txt": b"b"})
    (offset,) = struct.unpack_from("<L", data, end_record(data) + END_CD_OFFSET)
    patch(data, end_record(data) + END_CD_OFFSET, "<L", offset + junk)
    for index in range(2):
        patch_central(data, index, CENTRAL_OFFSET, "<L", local_header(data, index) + junk)
    error = reject(write(tmp_path, data))
    assert error.code == "zip_prepended_data"
    assert "100 bytes" in error.message


def test_trailing_data_is_rejected(tmp_path: Path) -> None:
    error = reject(write(tmp_path, zip_bytes({"a.txt": b"a"}) + b"extra bytes"))
    assert error.code == "zip_trailing_data"
    assert "11 bytes" in error.message


def test_multi_disk_archives_are_rejected(tmp_path: Path) -> None:
    data = zip_bytes({"a.txt": b"a"})
    patch(data, end_record(data) + END_DISK, "<H", 1)
    assert reject(write(tmp_path, data)).code == "zip_unsupported"


@pytest.mark.parametrize("keep", [lambda n: n - 10, lambda n: n // 2, lambda n: 30, lambda n: 0])
def test_truncated_archives_are_corrupt(tmp_path: Path, keep: Callable[[int], int]) -> None:
    data = zip_bytes({"a.txt": b"a" * 500, "b.txt": b"b" * 500})
    error = reject(write(tmp_path, data[: keep(len(data))]))
    assert error.code == "zip_corrupt"


def test_random_bytes_are_corrupt(tmp_path: Path) -> None:
    error = reject(write(tmp_path, hashlib.sha256(b"x").digest() * 100))
    assert error.code == "zip_corrupt"
    assert "not a zip archive" in error.message
