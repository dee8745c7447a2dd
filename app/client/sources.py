"""Upload bodies: a file, an open binary file or a model folder zipped on the fly.

Nothing is read into memory whole: bodies are produced chunk by chunk while the request is sent,
and a folder is zipped entry by entry into a small buffer that is drained after every chunk.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1 << 20
# zipfile switches an entry to zip64 when told a size; beyond this it must be told up front.
_ZIP64_LIMIT = (1 << 31) - 1

ProgressCallback = Callable[[int, "int | None"], None]
"""Called with (bytes done, total bytes or None when unknown) as a transfer advances."""


@dataclass(frozen=True)
class UploadSource:
    filename: str
    size: int | None  # exact body size, sent as Content-Length; None: chunked
    estimate: int | None  # for progress when the exact size is unknown (a zip being built)
    chunks: Callable[[], Iterator[bytes]]


def upload_source(
    source: str | os.PathLike[str] | BinaryIO, *, deflate: bool = False
) -> UploadSource:
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            return _folder_source(path, deflate=deflate)
        if not path.is_file():
            raise FileNotFoundError(f"no such file or folder: {path}")
        size = path.stat().st_size
        return UploadSource(path.name, size, size, lambda: _file_chunks(path))
    return _stream_source(source)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from read_chunks(handle)


def read_chunks(handle: BinaryIO) -> Iterator[bytes]:
    while block := handle.read(CHUNK_BYTES):
        yield block


def _stream_source(handle: BinaryIO) -> UploadSource:
    size: int | None = None
    try:
        size = os.fstat(handle.fileno()).st_size - handle.tell()
    except (AttributeError, OSError, ValueError):
        size = None
    name = Path(str(getattr(handle, "name", "upload"))).name
    return UploadSource(name, size, size, lambda: read_chunks(handle))


def _folder_source(folder: Path, *, deflate: bool) -> UploadSource:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"folder {folder} has no files to upload")
    estimate = sum(p.stat().st_size for p in files)
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    return UploadSource(
        f"{folder.name}.zip", None, estimate, lambda: zip_chunks(folder, files, method)
    )


class _Sink:
    """A write-only file for zipfile; it has no tell(), so zipfile streams with data descriptors."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> Iterator[bytes]:
        if self.parts:
            data = b"".join(self.parts)
            self.parts.clear()
            yield data


def zip_chunks(folder: Path, files: list[Path], method: int) -> Iterator[bytes]:
    """The zip of `folder` (entries under `folder.name/`, as `zip -r` makes it), in chunks."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=method) as archive:
        for path in files:
            info = zipfile.ZipInfo.from_file(path, f"{folder.name}/{path.relative_to(folder)}")
            info.compress_type = method
            size = path.stat().st_size
            with (
                path.open("rb") as src,
                archive.open(info, "w", force_zip64=size > _ZIP64_LIMIT) as dst,
            ):
                for block in read_chunks(src):
                    dst.write(block)
                    yield from sink.drain()
            yield from sink.drain()
    yield from sink.drain()


def counted(
    chunks: Iterator[bytes], total: int | None, progress: ProgressCallback | None
) -> Iterator[bytes]:
    """`chunks`, reporting the bytes handed on so far; the last report has done == total."""
    done = 0
    for block in chunks:
        yield block
        done += len(block)
        if progress is not None:
            progress(done, total)
    if progress is not None:
        progress(done, done)
