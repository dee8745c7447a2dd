"""The one assertion every hostile case goes through: a clear 4xx and nothing left behind."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.live_server import LiveServer


@dataclass(frozen=True)
class Footprint:
    """Everything an upload could leave: rows, blobs, temp entries, files beside the data dir."""

    checkpoint_ids: frozenset[str]
    blobs: frozenset[str]
    temp_entries: frozenset[str]
    outside: frozenset[str]

    @classmethod
    def of(cls, server: LiveServer, client: httpx.Client) -> Footprint:
        data_dir = server.data_dir
        items = client.get("/v1/checkpoints", params={"limit": 200}).json()["items"]
        return cls(
            checkpoint_ids=frozenset(item["id"] for item in items),
            blobs=_files_under(data_dir / "blobs"),
            temp_entries=frozenset(p.name for p in (data_dir / "tmp").iterdir()),
            outside=_files_under(data_dir.parent)
            - {f"{data_dir.name}/{p}" for p in _all(data_dir)},
        )


def _all(root: Path) -> frozenset[str]:
    return frozenset(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _files_under(root: Path) -> frozenset[str]:
    return frozenset(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def assert_error_shape(response: httpx.Response, status: int, code: str) -> str:
    """`{"error": {"code", "message"}}` with the expected status and code; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and len(message) > 10, body
    return message


def assert_nothing_left(
    server: LiveServer,
    client: httpx.Client,
    before: Footprint,
    absent: Iterable[Path] = (),
    *,
    settle_seconds: float = 0.0,
) -> None:
    """Same rows, blobs, temp entries and outside files as `before`; `absent` paths missing.

    `settle_seconds` lets cleanup that runs after a client vanished (a disconnect) finish.
    """
    deadline = time.monotonic() + settle_seconds
    while True:
        after = Footprint.of(server, client)
        if after == before or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    assert after.checkpoint_ids == before.checkpoint_ids
    assert after.blobs == before.blobs
    assert after.temp_entries == before.temp_entries
    assert after.outside == before.outside
    for path in absent:
        assert not path.exists(), f"{path} was written"
    assert client.get("/health").status_code == 200


def assert_rejected(
    server: LiveServer,
    client: httpx.Client,
    send: Callable[[], httpx.Response],
    status: int,
    code: str,
    *,
    absent: Iterable[Path] = (),
) -> str:
    """Send a hostile request; assert the error and that it left nothing. Returns the message."""
    before = Footprint.of(server, client)
    message = assert_error_shape(send(), status, code)
    assert_nothing_left(server, client, before, absent)
    return message


def post_raw(
    client: httpx.Client, data: bytes, name: str = "hostile", **params: str
) -> httpx.Response:
    return client.post(
        "/v1/checkpoints",
        content=data,
        params={"name": name, **params},
        headers={"Content-Type": "application/octet-stream"},
    )


def assert_upload_rejected(
    server: LiveServer,
    client: httpx.Client,
    data: bytes,
    status: int,
    code: str,
    *,
    absent: Iterable[Path] = (),
) -> str:
    """The common case: a raw octet-stream upload of `data`."""
    return assert_rejected(
        server, client, lambda: post_raw(client, data), status, code, absent=absent
    )
