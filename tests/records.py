"""Checkpoint records for tests that exercise the runtime without a database row."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.ingest.types import FileRecord
from app.records import CheckpointRecord
from app.storage.blobs import BlobStore

_BLANK = CheckpointRecord(
    id="ckpt-1",
    name="tiny",
    version=1,
    format="hf_zip",
    sha256="0" * 64,
    size_bytes=0,
    files=(),
    tensors=(),
    parameter_count=0,
    parameters_by_dtype={},
    weights_digest="0" * 64,
    architecture=None,
    training=None,
    tokenizer={"present": False, "kind": None, "vocab_size": None},
)


def record(**fields: Any) -> CheckpointRecord:
    """A record holding `fields`, placeholders for the rest."""
    return replace(_BLANK, **fields)


def stored_record(folder: Path, store: BlobStore, **overrides: Any) -> CheckpointRecord:
    """`folder`'s files put in `store`, recorded as a servable GPT-2 checkpoint's files."""
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        staged = store.tmp_dir / digest
        shutil.copyfile(path, staged)
        store.put(staged, digest)
        files.append(FileRecord(path=path.name, size=len(data), sha256=digest, origin="member"))
    fields: dict[str, Any] = {
        "files": tuple(files),
        "architecture": {"model_type": "gpt2"},
        "tokenizer": {"present": True},
    }
    return record(**(fields | overrides))
