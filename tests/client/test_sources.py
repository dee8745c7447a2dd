"""Upload bodies are produced in bounded chunks: a folder's zip is never built in memory."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from app.client.sources import CHUNK_BYTES, upload_source


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "run-7"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(os.urandom(5 * CHUNK_BYTES + 123))
    (root / "config.json").write_text('{"n_layer": 2}' * 100)
    (root / "sub" / "notes.txt").write_text("hello\n")
    return root


@pytest.mark.parametrize("deflate", [False, True])
def test_folder_zip_streams_in_bounded_chunks(folder: Path, deflate: bool) -> None:
    source = upload_source(folder, deflate=deflate)
    assert source.filename == "run-7.zip" and source.size is None
    chunks = list(source.chunks())
    assert max(len(chunk) for chunk in chunks) <= CHUNK_BYTES + 4096
    assert len(chunks) >= 5  # random weights do not compress: one chunk per read at least
    with zipfile.ZipFile(io.BytesIO(b"".join(chunks))) as archive:
        assert archive.testzip() is None
        method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
        assert {info.compress_type for info in archive.infolist()} == {method}
        for path in folder.rglob("*"):
            if path.is_file():
                name = f"run-7/{path.relative_to(folder).as_posix()}"
                assert archive.read(name) == path.read_bytes()


def test_file_and_stream_sources_know_their_size(folder: Path) -> None:
    path = folder / "weights.bin"
    source = upload_source(path)
    assert (source.filename, source.size) == ("weights.bin", path.stat().st_size)
    with path.open("rb") as handle:
        handle.read(100)
        partial = upload_source(handle)
        assert partial.size == path.stat().st_size - 100
        assert b"".join(partial.chunks()) == path.read_bytes()[100:]
    unsized = upload_source(io.BytesIO(b"abc"))
    assert unsized.size is None and b"".join(unsized.chunks()) == b"abc"


def test_missing_or_empty_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        upload_source(tmp_path / "absent.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no files"):
        upload_source(tmp_path / "empty")
