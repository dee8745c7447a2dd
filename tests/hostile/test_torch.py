"""Hostile torch.save files over HTTP: code-running pickles, foreign globals, bombs, liars.

Every payload would create the canary file if anything unpickled it without restrictions.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.hostile.builders import (
    dup_bomb,
    getattr_builtins_pickle,
    hostile_payloads,
    memo_bomb,
    oversized_tensor_pickle,
    torch_bytes,
    torchscript_bytes,
    with_data_pkl_bytes,
)
from tests.hostile.invariants import assert_upload_rejected
from tests.live_server import LiveServer

SERVER_SETTINGS = {"max_upload_bytes": 8 << 20}


class NotAllowlisted:
    """A plain class: pickled by reference to this module, which weights-only loading refuses."""

    value = 1


def zeros() -> object:
    import torch

    return torch.zeros(2)


def deflated_torch_archive() -> bytes:
    data = torch_bytes({"w": zeros()})
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as old, zipfile.ZipFile(out, "w") as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


@pytest.mark.parametrize("payload", ["os.system", "eval", "exec", "subprocess.Popen"])
def test_reduce_payload_never_runs(
    server: LiveServer, client: httpx.Client, tmp_path: Path, payload: str
) -> None:
    canary = tmp_path / "pwned"
    data = torch_bytes({"w": zeros(), "evil": hostile_payloads(canary)[payload]})
    assert_upload_rejected(server, client, data, 422, "torch_unsafe_pickle", absent=[canary])


def test_getattr_builtins_payload_never_runs(
    server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    canary = tmp_path / "pwned"
    data = with_data_pkl_bytes(getattr_builtins_pickle(canary))
    assert_upload_rejected(server, client, data, 422, "torch_unsafe_pickle", absent=[canary])


def test_raw_pickle_payload_never_runs(
    server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    canary = tmp_path / "pwned"
    data = pickle.dumps({"w": [1.0], "evil": hostile_payloads(canary)["exec"]})
    assert_upload_rejected(server, client, data, 422, "torch_legacy_format", absent=[canary])


CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "global outside the allowlist": (
        lambda: torch_bytes({"w": zeros(), "x": NotAllowlisted()}),
        "torch_unsafe_pickle",
    ),
    "torchscript": (torchscript_bytes, "torch_torchscript"),
    "legacy serialization": (
        lambda: torch_bytes({"w": zeros()}, _use_new_zipfile_serialization=False),
        "torch_legacy_format",
    ),
    "dup opcodes": (lambda: with_data_pkl_bytes(dup_bomb()), "torch_unsafe_pickle"),
    "memo expansion bomb": (lambda: with_data_pkl_bytes(memo_bomb()), "torch_resource_limit"),
    "tensor larger than its storage": (oversized_tensor_pickle, "torch_load_failed"),
    "compressed torch archive": (deflated_torch_archive, "torch_bad_archive"),
}


@pytest.mark.parametrize(("build", "code"), CASES.values(), ids=list(CASES))
def test_hostile_torch_file_is_rejected_cleanly(
    server: LiveServer, client: httpx.Client, build: Callable[[], bytes], code: str
) -> None:
    assert_upload_rejected(server, client, build(), 422, code)
