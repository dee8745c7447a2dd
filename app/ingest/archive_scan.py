"""The hardened pre-pass over an uploaded zip archive, before a single byte is extracted.

`scan_zip` validates the whole archive from its central directory and local headers: structure,
every entry's name, flags, method, type and sizes, the total size, that no two entries share
bytes, and the paths the files will get; it returns the plan that app.ingest.archive_extract
follows.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import unicodedata
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal, NoReturn

from app.errors import PayloadTooLarge, RejectedCheckpoint
from app.ingest.types import IngestLimits

ZipKind = Literal["folder", "torch", "torchscript"]

MAX_CENTRAL_DIRECTORY_BYTES = 64 << 20
MAX_NAME_LENGTH = 1024
MAX_COMPONENT_BYTES = 255

NOISE_BASENAMES = frozenset({".DS_Store", "Thumbs.db"})
NOISE_FOLDERS = frozenset({"__MACOSX"})
NESTED_ARCHIVE_SUFFIXES = (
    ".zip",
    ".tar",
    ".tgz",
    ".gz",
    ".bz2",
    ".tbz2",
    ".xz",
    ".txz",
    ".zst",
    ".lz4",
    ".lzma",
    ".7z",
    ".rar",
)
TORCH_MARKERS = frozenset({"byteorder", "version", ".format_version"})

_STORED, _DEFLATED = zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED
_FLAG_ENCRYPTED = 0x01
_FLAG_PATCHED = 0x20
_FLAG_STRONG_ENCRYPTION = 0x40
_FLAG_UTF8 = 0x800

_END_RECORD = struct.Struct("<4s4H2LH")
_END_RECORD_SIGNATURE = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIGNATURE = b"PK\x06\x07"
_ZIP64_END_RECORD = struct.Struct("<4sQ2H2L4Q")
_ZIP64_END_RECORD_SIGNATURE = b"PK\x06\x06"
_ZIP64_END_RECORD_BODY = _ZIP64_END_RECORD.size - 12  # the size field excludes its first 12 bytes
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"
_CENTRAL_RECORD_MIN_BYTES = 46
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class ZipMember:
    """A file to extract: `name_in_zip` as the archive spells it, `path` relative to the root."""

    name_in_zip: str
    path: str
    size: int
    compress_size: int
    crc: int
    method: int


@dataclass(frozen=True)
class ZipPlan:
    """What `scan_zip` found: the files to extract (noise dropped) and what the archive is.

    `top_folder` is the single common folder stripped from every path ("" when none was).
    """

    members: tuple[ZipMember, ...]
    kind: ZipKind
    top_folder: str = ""

    @property
    def total_size(self) -> int:
        return sum(member.size for member in self.members)


@dataclass(frozen=True)
class _DirectoryLocation:
    entries: int
    offset: int
    size: int


def reject(code: str, message: str) -> NoReturn:
    """Refuse the archive: RejectedCheckpoint with the code `zip_<code>`."""
    raise RejectedCheckpoint(message, code=f"zip_{code}")


def quote(name: str) -> str:
    """An entry name fit for a message: repr'd (control characters escaped) and shortened."""
    text = repr(name)
    return text if len(text) <= 120 else text[:117] + "..."


# --- end of central directory --------------------------------------------------------------


def _find_end_record(file: BinaryIO, file_size: int) -> tuple[int, tuple[int, ...]]:
    """Returns the end record's offset and fields, found the way zipfile finds it.

    zipfile takes the last signature in the file's tail, so this does too (a different choice
    would let an archive comment show zipfile a different archive than the one checked here).
    """
    tail_len = min(file_size, _END_RECORD.size + 0xFFFF)
    file.seek(file_size - tail_len)
    tail = file.read(tail_len)
    at = len(tail) - _END_RECORD.size
    if not (tail[at:].startswith(_END_RECORD_SIGNATURE) and tail.endswith(b"\0\0")):
        at = tail.rfind(_END_RECORD_SIGNATURE)
    if at < 0 or at + _END_RECORD.size > len(tail):
        reject("corrupt", "not a zip archive (no end-of-central-directory record); truncated?")
    fields = _END_RECORD.unpack_from(tail, at)[1:]
    record_end = at + _END_RECORD.size + fields[-1]
    if record_end < len(tail):
        reject("trailing_data", f"{len(tail) - record_end} bytes follow the end of the archive")
    if record_end > len(tail):
        reject("corrupt", "the archive ends inside its comment; truncated?")
    return file_size - tail_len + at, fields


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    if offset < 0:
        return b""
    file.seek(offset)
    return file.read(size)


def _read_zip64_end(file: BinaryIO, end_record_at: int) -> tuple[int, ...] | None:
    """Zip64 fields (disk, cd disk, entries here, entries, cd size, cd offset, record offset)."""
    locator_at = end_record_at - _ZIP64_LOCATOR.size
    locator = _read_at(file, locator_at, _ZIP64_LOCATOR.size)
    if len(locator) < _ZIP64_LOCATOR.size or not locator.startswith(_ZIP64_LOCATOR_SIGNATURE):
        return None
    _, record_disk, declared_at, disks = _ZIP64_LOCATOR.unpack(locator)
    if record_disk != 0 or disks > 1:
        reject("unsupported", "multi-disk (split) zip archives are not supported")
    # Like zipfile, require the zip64 end record right before its locator, without extra data.
    record_at = locator_at - _ZIP64_END_RECORD.size
    if declared_at < record_at:
        reject("prepended_data", f"{record_at - declared_at} bytes precede the zip archive")
    record = _read_at(file, record_at, _ZIP64_END_RECORD.size)
    if (
        declared_at != record_at
        or len(record) < _ZIP64_END_RECORD.size
        or not record.startswith(_ZIP64_END_RECORD_SIGNATURE)
        or _ZIP64_END_RECORD.unpack(record)[1] != _ZIP64_END_RECORD_BODY
    ):
        reject("corrupt", "the zip64 end-of-central-directory record is malformed")
    *_, disk, directory_disk, here, entries, size, offset = _ZIP64_END_RECORD.unpack(record)
    return disk, directory_disk, here, entries, size, offset, record_at


def _locate_central_directory(
    file: BinaryIO, file_size: int, limits: IngestLimits
) -> _DirectoryLocation:
    end_record_at, fields = _find_end_record(file, file_size)
    disk, directory_disk, here, entries, size, offset, _ = fields
    directory_end = end_record_at
    zip64 = _read_zip64_end(file, end_record_at)
    if zip64 is not None:
        disk, directory_disk, here, entries, size, offset, directory_end = zip64
    if disk != 0 or directory_disk != 0 or here != entries:
        reject("unsupported", "multi-disk (split) zip archives are not supported")
    _check_directory_size(entries, size, limits)
    gap = directory_end - (offset + size)
    if gap > 0:
        reject(
            "prepended_data",
            f"the archive's offsets are {gap} bytes short: data was prepended to it or "
            "inserted before its end record",
        )
    if gap < 0:
        reject("corrupt", "the central directory runs past its end record")
    return _DirectoryLocation(entries, offset, size)


def _check_directory_size(entries: int, size: int, limits: IngestLimits) -> None:
    if entries > limits.max_zip_entries:
        reject(
            "too_many_entries",
            f"archive has {entries} entries; the limit is {limits.max_zip_entries}",
        )
    if size > MAX_CENTRAL_DIRECTORY_BYTES:
        reject(
            "central_directory_too_large",
            f"central directory is {size} bytes; the limit is {MAX_CENTRAL_DIRECTORY_BYTES}",
        )
    if size < entries * _CENTRAL_RECORD_MIN_BYTES:
        reject("corrupt", f"central directory of {size} bytes cannot hold {entries} entries")


# --- per-entry checks ---------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not name:
        reject("bad_name", "an entry has an empty name")
    if len(name) > MAX_NAME_LENGTH:
        reject("bad_name", f"entry {quote(name)}: name is longer than {MAX_NAME_LENGTH}")
    if _CONTROL_CHARACTER.search(name):
        reject("bad_name", f"entry {quote(name)}: name contains NUL or control characters")
    if "\\" in name:
        reject("path_traversal", f"entry {quote(name)}: backslashes are not allowed in names")
    if name.startswith("/") or (name[1:2] == ":" and name[0].isascii() and name[0].isalpha()):
        reject("path_traversal", f"entry {quote(name)}: absolute path")
    parts = name.removesuffix("/").split("/")
    if ".." in parts:
        reject("path_traversal", f"entry {quote(name)}: '..' in path")
    if any(part in ("", ".") for part in parts):
        reject("bad_name", f"entry {quote(name)}: empty or '.' path component")
    if any(len(part.encode("utf-8")) > MAX_COMPONENT_BYTES for part in parts):
        reject("bad_name", f"entry {quote(name)}: a path component exceeds 255 bytes")


def _check_flags_and_method(info: zipfile.ZipInfo) -> None:
    name = quote(info.orig_filename)
    if info.flag_bits & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
        reject("encrypted", f"entry {name} is encrypted")
    if info.flag_bits & _FLAG_PATCHED:
        reject("unsupported_method", f"entry {name} uses patched data")
    if info.compress_type not in (_STORED, _DEFLATED):
        reject(
            "unsupported_method",
            f"entry {name} uses compression method {info.compress_type}; "
            "only stored and deflate are supported",
        )


def _check_file_type(info: zipfile.ZipInfo) -> None:
    file_type = stat.S_IFMT(info.external_attr >> 16)
    if file_type == stat.S_IFLNK:
        reject("symlink", f"entry {quote(info.orig_filename)} is a symbolic link")
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        reject("special_file", f"entry {quote(info.orig_filename)} is not a regular file")


def _check_sizes(info: zipfile.ZipInfo, limits: IngestLimits) -> None:
    name = quote(info.orig_filename)
    if info.is_dir() and info.file_size:
        reject("corrupt", f"directory entry {name} has data")
    if info.compress_type == _STORED and info.compress_size != info.file_size:
        reject("corrupt", f"stored entry {name}: compressed and real sizes differ")
    ratio_limit = limits.max_entry_ratio * info.compress_size
    if info.file_size > limits.ratio_check_min_bytes and info.file_size > ratio_limit:
        reject(
            "bomb",
            f"entry {name} claims {info.file_size} bytes from {info.compress_size} compressed "
            f"(more than {limits.max_entry_ratio:g}x)",
        )


def _is_nested_archive(name: str) -> bool:
    return name.lower().endswith(NESTED_ARCHIVE_SUFFIXES)


def _check_entry(info: zipfile.ZipInfo, limits: IngestLimits) -> None:
    _check_name(info.orig_filename)
    _check_flags_and_method(info)
    _check_file_type(info)
    _check_sizes(info, limits)
    if not info.is_dir() and _is_nested_archive(info.orig_filename):
        reject(
            "nested_archive",
            f"entry {quote(info.orig_filename)} is itself an archive; upload its contents",
        )


def _check_total_size(infos: Sequence[zipfile.ZipInfo], limits: IngestLimits) -> None:
    total = sum(info.file_size for info in infos)
    if total > limits.max_uncompressed_bytes:
        raise PayloadTooLarge(
            f"archive expands to {total} bytes; the limit is {limits.max_uncompressed_bytes}",
            code="zip_too_large",
        )


# --- layout: where each entry's bytes really are -------------------------------------------


def _decode_name(raw: bytes, flag_bits: int) -> str | None:
    try:
        return raw.decode("utf-8" if flag_bits & _FLAG_UTF8 else "cp437")
    except UnicodeDecodeError:
        return None


def _data_start(file: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Offset of the entry's data, from its local header (whose extra field may differ)."""
    header = _read_at(file, info.header_offset, _LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size or not header.startswith(_LOCAL_HEADER_SIGNATURE):
        reject(
            "corrupt",
            f"entry {quote(info.orig_filename)}: no local header at offset {info.header_offset}",
        )
    name_len, extra_len = _LOCAL_HEADER.unpack(header)[-2:]
    local_name = _decode_name(file.read(name_len), info.flag_bits)
    if local_name != info.orig_filename:
        reject(
            "name_mismatch",
            f"entry {quote(info.orig_filename)} is named {quote(str(local_name))} in its "
            "local header",
        )
    return int(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)


def _check_layout(
    file: BinaryIO, infos: Sequence[zipfile.ZipInfo], directory: _DirectoryLocation
) -> None:
    """Entries must not share bytes with each other or with the central directory."""
    ordered = sorted(infos, key=lambda info: info.header_offset)
    if ordered and ordered[0].header_offset > 0:
        first = ordered[0].header_offset
        reject("prepended_data", f"{first} bytes of unexpected data precede the first entry")
    data_end = 0
    previous: zipfile.ZipInfo | None = None
    for info in ordered:
        if previous is not None and info.header_offset < data_end:
            reject(
                "overlapping_entries",
                f"entry {quote(info.orig_filename)} overlaps the data of "
                f"{quote(previous.orig_filename)}",
            )
        data_end = _data_start(file, info) + info.compress_size
        previous = info
    if previous is not None and data_end > directory.offset:
        reject(
            "overlapping_entries",
            f"entry {quote(previous.orig_filename)} overlaps the central directory",
        )


# --- naming: noise, the common top folder, duplicates, kind --------------------------------


def _is_noise(name: str) -> bool:
    parts = name.removesuffix("/").split("/")
    basename = parts[-1]
    return (
        basename in NOISE_BASENAMES
        or basename.startswith("._")
        or not NOISE_FOLDERS.isdisjoint(parts)
    )


def _common_top_folder(names: Sequence[str]) -> str:
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return tops.pop()
    return ""


def _strip_top_folder(name: str, top_folder: str) -> str:
    return name[len(top_folder) + 1 :] if top_folder else name


def _fold(path: str) -> str:
    return unicodedata.normalize("NFC", path).casefold()


def _check_exact_duplicates(infos: Iterable[zipfile.ZipInfo]) -> None:
    seen: set[str] = set()
    for info in infos:
        if info.orig_filename in seen:
            reject("duplicate_name", f"entry {quote(info.orig_filename)} appears twice")
        seen.add(info.orig_filename)


def _check_distinct_paths(members: Sequence[ZipMember]) -> None:
    """Paths must stay distinct on case-insensitive filesystems, and no file may be a folder."""
    seen: dict[str, str] = {}
    folders: set[str] = set()
    for member in members:
        key = _fold(member.path)
        if key in seen:
            reject(
                "duplicate_name",
                f"entries {quote(seen[key])} and {quote(member.path)} differ only in case "
                "or Unicode normalization",
            )
        seen[key] = member.path
        parts = key.split("/")
        folders.update("/".join(parts[:depth]) for depth in range(1, len(parts)))
    for key, path in seen.items():
        if key in folders:
            reject("duplicate_name", f"{quote(path)} is both a file and a folder")


def _classify(paths: Iterable[str]) -> ZipKind:
    names = set(paths)
    if "data.pkl" not in names:
        return "folder"
    if "constants.pkl" in names or any(name.startswith("code/") for name in names):
        return "torchscript"
    if not TORCH_MARKERS.isdisjoint(names):
        return "torch"
    return "folder"


def _plan(infos: Sequence[zipfile.ZipInfo]) -> ZipPlan:
    _check_exact_duplicates(infos)
    files = [info for info in infos if not info.is_dir() and not _is_noise(info.orig_filename)]
    if not files:
        reject("empty", "the archive contains no files")
    top_folder = _common_top_folder([info.orig_filename for info in files])
    members = tuple(
        ZipMember(
            name_in_zip=info.filename,
            path=_strip_top_folder(info.orig_filename, top_folder),
            size=info.file_size,
            compress_size=info.compress_size,
            crc=info.CRC,
            method=info.compress_type,
        )
        for info in files
    )
    _check_distinct_paths(members)
    return ZipPlan(members, _classify(member.path for member in members), top_folder)


# --- scan ------------------------------------------------------------------------------------


def _read_infos(file: BinaryIO, directory: _DirectoryLocation) -> list[zipfile.ZipInfo]:
    try:
        with zipfile.ZipFile(file) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, struct.error, NotImplementedError) as error:
        reject("corrupt", f"the archive's central directory is unreadable: {error}")
    if len(infos) != directory.entries:
        reject(
            "corrupt",
            f"the archive declares {directory.entries} entries but lists {len(infos)}",
        )
    return infos


def scan_zip(path: str | os.PathLike[str], limits: IngestLimits) -> ZipPlan:
    """Validates the archive's structure and every entry without extracting anything."""
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        directory = _locate_central_directory(file, file_size, limits)
        infos = _read_infos(file, directory)
        for info in infos:
            _check_entry(info, limits)
        _check_total_size(infos, limits)
        _check_layout(file, infos, directory)
    return _plan(infos)
