"""Streamed extraction of a scanned zip archive.

`extract_zip` streams the members `scan_zip` planned to disk in one pass that also hashes them (and
their tensors, for safetensors members), refusing anything that differs from the scan.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from app.errors import InsufficientStorage, RejectedCheckpoint
from app.ingest.archive_scan import ZipMember, ZipPlan, quote, reject
from app.ingest.safetensors_format import (
    BlockWorker,
    SafetensorsHeader,
    SafetensorsStreamHasher,
)
from app.ingest.types import IngestLimits

EXTRACT_BLOCK_SIZE = 1 << 20
# Smaller members are hashed and written inline: a helper thread costs more than it saves.
OFFLOAD_MIN_BYTES = 8 << 20


@dataclass(frozen=True)
class ExtractedFile:
    """One extracted member; `path` is relative to the destination folder."""

    path: str
    size: int
    sha256: str
    safetensors: tuple[SafetensorsHeader, dict[str, str]] | None


def _prepare_destination(dest: Path) -> Path:
    if dest.is_symlink() or not dest.is_dir() or any(dest.iterdir()):
        raise ValueError(f"extraction destination {dest} must be an existing empty folder")
    return dest.resolve()


def _create_target(root: Path, relative: str) -> BinaryIO:
    target = root.joinpath(*relative.split("/"))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(root):
            reject("path_traversal", f"{quote(relative)} would land outside the folder")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        descriptor = os.open(target, flags, 0o644)
    except (FileExistsError, NotADirectoryError):
        reject("duplicate_name", f"{quote(relative)} collides with another extracted path")
    return os.fdopen(descriptor, "wb")


def _matching_info(archive: zipfile.ZipFile, member: ZipMember) -> zipfile.ZipInfo:
    try:
        info = archive.getinfo(member.name_in_zip)
    except KeyError:
        reject("corrupt", f"entry {quote(member.name_in_zip)} is missing from the archive")
    declared = (info.file_size, info.compress_size, info.CRC, info.compress_type)
    if declared != (member.size, member.compress_size, member.crc, member.method):
        reject("corrupt", f"entry {quote(member.name_in_zip)} changed since it was scanned")
    return info


def _copy_member(
    source: IO[bytes], out: BinaryIO, member: ZipMember, limits: IngestLimits
) -> tuple[str, tuple[SafetensorsHeader, dict[str, str]] | None]:
    """Copies one member, hashing it (and its tensors) as the bytes go by.

    The helper thread hashes and writes while this thread reads, checks the CRC and hashes the
    tensors: measured about 1.8x faster than one thread on two cores.
    """
    tensors = None
    if member.path.endswith(".safetensors"):
        tensors = SafetensorsStreamHasher(member.size, limits)
    file_hash = hashlib.sha256()

    def hash_and_write(block: bytes) -> None:
        file_hash.update(block)
        out.write(block)

    written = 0
    offload = member.size >= OFFLOAD_MIN_BYTES
    with BlockWorker(hash_and_write, offload=offload) as worker:
        while block := source.read(EXTRACT_BLOCK_SIZE):
            written += len(block)
            if written > member.size:
                reject("bomb", f"entry {quote(member.name_in_zip)} expands past its size")
            worker.submit(block)
            if tensors is not None:
                tensors.update(block)
        worker.finish()
    if written != member.size:
        reject("corrupt", f"entry {quote(member.name_in_zip)} is truncated")
    return file_hash.hexdigest(), tensors.finish() if tensors is not None else None


def _extract_member(
    archive: zipfile.ZipFile, member: ZipMember, root: Path, limits: IngestLimits
) -> ExtractedFile:
    info = _matching_info(archive, member)
    try:
        with archive.open(info) as source, _create_target(root, member.path) as out:
            digest, tensors = _copy_member(source, out, member, limits)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        reject("corrupt", f"entry {quote(member.name_in_zip)} is damaged: {error}")
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InsufficientStorage("the server ran out of disk space while unpacking") from error
        raise
    except RejectedCheckpoint as error:
        if not error.code.startswith("safetensors_"):
            raise
        raise RejectedCheckpoint(f"{member.path}: {error.message}", code=error.code) from None
    return ExtractedFile(member.path, member.size, digest, tensors)


def extract_zip(
    path: str | os.PathLike[str],
    plan: ZipPlan,
    dest: Path,
    limits: IngestLimits,
    on_file: Callable[[ExtractedFile], None] | None = None,
) -> list[ExtractedFile]:
    """Streams the plan's members into the empty folder `dest`, hashing them on the way.

    `on_file` is called after each file is complete. On any error this raises and leaves
    partial output in `dest` for the caller to delete.
    """
    root = _prepare_destination(dest)
    extracted: list[ExtractedFile] = []
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError, EOFError, struct.error) as error:
        reject("corrupt", f"the archive is unreadable: {error}")
    with archive:
        for member in plan.members:
            result = _extract_member(archive, member, root, limits)
            extracted.append(result)
            if on_file is not None:
                on_file(result)
    return extracted
