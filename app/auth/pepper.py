"""The server secret that keys are hashed with: CKPT_KEY_PEPPER, else a file in the data dir."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from app.config import Settings

PEPPER_FILE = "auth_pepper"


def load_pepper(settings: Settings) -> bytes:
    if settings.key_pepper is not None:
        return settings.key_pepper.get_secret_value().encode()
    return _pepper_file(settings.data_dir / PEPPER_FILE)


def _pepper_file(path: Path) -> bytes:
    """Read the pepper, creating it (mode 0600) if absent; concurrent creators agree on one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".pepper-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
                handle.flush()
                os.fsync(handle.fileno())
            # link() fails if another process created it first: then theirs is the pepper.
            with contextlib.suppress(FileExistsError):
                os.link(temp, path)
        finally:
            os.unlink(temp)
    return path.read_bytes().strip()
