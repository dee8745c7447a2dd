"""sha256 of files, read in large chunks (hashlib releases the GIL on them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 4 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
