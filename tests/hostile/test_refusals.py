"""Every refusal of an otherwise valid upload, at every stage, leaves nothing behind.

The body is always a real checkpoint, so the only reason to refuse it is the one under test:
a bad query parameter (refused before the body is read), a bad multipart field or a missing
name (refused once the body is spooled), or a config that contradicts the archive (refused
after inspection). The spooled body in tmp/ must go in every case.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import TinyModel
from tests.hostile.builders import MULTIPART, multipart, part
from tests.hostile.invariants import assert_rejected
from tests.live_server import LiveServer

SERVER_SETTINGS = {"max_upload_bytes": 8 << 20}
BAD_NAMES = {
    "name starting with a dash": "-model",
    "name with a slash": "../model",
    "name of 32 hex digits": "0123456789abcdef0123456789abcdef",
    "name of 129 characters": "m" * 129,
    "name with a NUL": "mo\0del",
}
# query parameters (besides a valid name) -> (status, code)
BAD_QUERIES: dict[str, tuple[dict[str, str], int, str]] = {
    **{case: ({"name": name}, 400, "invalid_name") for case, name in BAD_NAMES.items()},
    "no name, no file name": ({}, 400, "missing_name"),
    "file name that makes no name": ({"filename": "...."}, 400, "missing_name"),
    "control character in the file name": (
        {"filename": "a\x01b.safetensors"},
        400,
        "invalid_filename",
    ),
    "metadata not JSON": ({"name": "ok", "metadata": "{oops"}, 400, "invalid_metadata"),
    "metadata not an object": ({"name": "ok", "metadata": "[1, 2]"}, 400, "invalid_metadata"),
    "config not JSON": ({"name": "ok", "config": "{oops"}, 422, "config_invalid"),
    "config not an object": ({"name": "ok", "config": "42"}, 422, "config_invalid"),
}
# multipart text fields -> (status, code)
BAD_FIELDS: dict[str, tuple[dict[str, bytes], int, str]] = {
    **{case: ({"name": name.encode()}, 400, "invalid_name") for case, name in BAD_NAMES.items()},
    "metadata field not JSON": ({"name": b"ok", "metadata": b"{oops"}, 400, "invalid_metadata"),
    "config field not an object": ({"name": b"ok", "config": b"[]"}, 422, "config_invalid"),
    "file name field with a control character": (
        {"name": b"ok", "filename": b"a\x7fb.safetensors"},
        400,
        "invalid_filename",
    ),
}


def _raw(client: httpx.Client, body: bytes, params: dict[str, str]) -> Callable[[], httpx.Response]:
    def send() -> httpx.Response:
        return client.post(
            "/v1/checkpoints",
            content=body,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )

    return send


def _multipart(
    client: httpx.Client, body: bytes, fields: dict[str, bytes]
) -> Callable[[], httpx.Response]:
    parts = [part(key, value) for key, value in fields.items()]
    data = multipart(*parts, part("file", body, "model.safetensors"))

    def send() -> httpx.Response:
        return client.post("/v1/checkpoints", content=data, headers={"Content-Type": MULTIPART})

    return send


CASES: dict[str, tuple[str, dict[str, Any], int, str]] = {
    **{f"query: {case}": ("query", *spec) for case, spec in BAD_QUERIES.items()},
    **{f"field: {case}": ("field", *spec) for case, spec in BAD_FIELDS.items()},
}


@pytest.mark.parametrize(("where", "values", "status", "code"), CASES.values(), ids=list(CASES))
def test_early_refusals_leave_nothing(
    server: LiveServer,
    client: httpx.Client,
    tiny: TinyModel,
    where: str,
    values: dict[str, Any],
    status: int,
    code: str,
) -> None:
    body = tiny.safetensors.read_bytes()
    send = _raw(client, body, values) if where == "query" else _multipart(client, body, values)
    assert_rejected(server, client, send, status, code)


def test_config_sent_beside_the_archive_config(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    """Refused after inspection: the extracted members and the spooled body both go."""
    send = _raw(client, tiny.zip_stored.read_bytes(), {"name": "ok", "config": "{}"})
    assert_rejected(server, client, send, 400, "config_conflict")


def test_the_same_upload_stored_afterwards_is_accepted(
    server: LiveServer, client: httpx.Client, tiny: TinyModel
) -> None:
    """The refusals above were for their reason alone: the body itself is a valid upload."""
    response = _raw(client, tiny.safetensors.read_bytes(), {"name": "ok"})()
    assert response.status_code == 201, response.text
    assert list((server.data_dir / "tmp").iterdir()) == []
