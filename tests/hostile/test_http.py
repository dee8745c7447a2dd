"""Hostile HTTP: bad multipart bodies, wrong types, lying lengths, stalls and disconnects."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.hostile.builders import BOUNDARY, MULTIPART, multipart, part
from tests.hostile.invariants import (
    Footprint,
    assert_error_shape,
    assert_nothing_left,
    assert_rejected,
)
from tests.hostile.rawhttp import open_upload, read_response, trickle
from tests.live_server import LiveServer

MAX_UPLOAD = 4 << 20
SERVER_SETTINGS = {
    "max_upload_bytes": MAX_UPLOAD,
    "body_timeout_seconds": 1.0,
    "min_body_bytes_per_second": 1000,
}

FILE = part("file", b"PK\x03\x04 not really a zip", "model.zip")
MULTIPART_CASES: dict[str, tuple[bytes, str, int, str]] = {
    "no file part": (multipart(part("name", b"hostile")), MULTIPART, 400, "missing_file"),
    "unexpected part": (multipart(FILE, part("other", b"x")), MULTIPART, 400, "bad_multipart"),
    "two file parts": (multipart(FILE, FILE), MULTIPART, 400, "bad_multipart"),
    "field twice": (
        multipart(part("name", b"a"), part("name", b"b"), FILE),
        MULTIPART,
        400,
        "bad_multipart",
    ),
    "huge field": (
        multipart(part("metadata", b"x" * (2 << 20)), FILE),
        MULTIPART,
        413,
        "field_too_large",
    ),
    "field not utf-8": (
        multipart(part("name", b"\xff\xfe"), FILE),
        MULTIPART,
        400,
        "bad_multipart",
    ),
    "part without a name": (
        multipart(f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n".encode()),
        MULTIPART,
        400,
        "bad_multipart",
    ),
    # NaN is not JSON: SQLite would store it, PostgreSQL's json type refuses it (was a 500).
    "NaN in metadata": (
        multipart(part("metadata", b'{"loss": NaN}'), FILE),
        MULTIPART,
        400,
        "invalid_metadata",
    ),
    "control character in the file name": (
        multipart(part("file", b"PK\x03\x04 not really a zip", "a\x01b.zip")),
        MULTIPART,
        400,
        "invalid_filename",
    ),
    "no boundary parameter": (multipart(FILE), "multipart/form-data", 400, "bad_multipart"),
    "other boundary in body": (
        multipart(FILE).replace(BOUNDARY.encode(), b"somethingelse"),
        MULTIPART,
        400,
        "bad_multipart",
    ),
    "no closing boundary": (multipart(FILE, closing=False), MULTIPART, 400, "bad_multipart"),
    "garbage body": (b"\x00\x01garbage" * 100, MULTIPART, 400, "bad_multipart"),
    "text/plain": (b"hello", "text/plain", 415, "unsupported_media_type"),
    "application/json": (b'{"file": "x"}', "application/json", 415, "unsupported_media_type"),
    "urlencoded form": (
        b"file=x&name=y",
        "application/x-www-form-urlencoded",
        415,
        "unsupported_media_type",
    ),
}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"), MULTIPART_CASES.values(), ids=list(MULTIPART_CASES)
)
def test_bad_request_bodies(
    server: LiveServer,
    client: httpx.Client,
    body: bytes,
    content_type: str,
    status: int,
    code: str,
) -> None:
    def send() -> httpx.Response:
        return client.post(
            "/v1/checkpoints",
            content=body,
            params={"name": "hostile"},
            headers={"Content-Type": content_type},
        )

    assert_rejected(server, client, send, status, code)


def test_announced_size_over_the_cap_is_refused_before_the_body(
    server: LiveServer, client: httpx.Client
) -> None:
    before = Footprint.of(server, client)
    with open_upload(server, MAX_UPLOAD + 1) as sock:
        started = time.monotonic()
        response = read_response(sock, timeout=10)
    # Answered at once, not after the 1 s stall timeout that waiting for the body would hit.
    assert time.monotonic() - started < 0.9
    assert_error_shape(response.as_httpx(), 413, "upload_too_large")
    assert_nothing_left(server, client, before)


def test_streamed_body_over_the_cap_is_cut_off(server: LiveServer, client: httpx.Client) -> None:
    def body() -> object:
        for _ in range(6):
            yield b"\0" * (1 << 20)

    def send() -> httpx.Response:
        return client.post(
            "/v1/checkpoints",
            content=body(),  # type: ignore[arg-type]
            params={"name": "hostile"},
            headers={"Content-Type": "application/octet-stream"},
        )

    assert_rejected(server, client, send, 413, "upload_too_large")


def test_body_longer_than_announced_is_a_protocol_error(
    server: LiveServer, client: httpx.Client
) -> None:
    """Bytes past Content-Length are a second, malformed request on the connection: the HTTP
    parser refuses the connection (its own plain-text 400) and nothing is stored."""
    before = Footprint.of(server, client)
    with open_upload(server, 16) as sock:
        sock.sendall(b"not a checkpoint" + b"GARBAGE AFTER THE BODY\r\n\r\n")
        response = read_response(sock)
    assert response.status == 400
    assert_nothing_left(server, client, before, settle_seconds=2)


def test_body_shorter_than_announced_then_half_closed(
    server: LiveServer, client: httpx.Client
) -> None:
    before = Footprint.of(server, client)
    with open_upload(server, 4096) as sock:
        sock.sendall(b"\0" * 1000)
        sock.shutdown(socket.SHUT_WR)
        # The server sees the client gone: it answers nobody and closes the connection.
        with pytest.raises(ConnectionError, match="connection closed before a response"):
            read_response(sock, timeout=5)
    assert_nothing_left(server, client, before, settle_seconds=5)


@pytest.mark.parametrize("content_type", ["application/octet-stream", MULTIPART])
def test_client_vanishing_mid_upload_leaves_nothing(
    server: LiveServer, client: httpx.Client, content_type: str
) -> None:
    before = Footprint.of(server, client)
    body = multipart(part("file", b"\0" * (1 << 20), "m.zip"))
    with open_upload(server, len(body), content_type=content_type) as sock:
        sock.sendall(body[: len(body) // 2])
        time.sleep(0.2)  # the server is now spooling the upload to disk
    assert_nothing_left(server, client, before, settle_seconds=5)


@pytest.mark.parametrize("content_type", ["application/octet-stream", MULTIPART])
def test_stalled_body_times_out(
    server: LiveServer, client: httpx.Client, content_type: str
) -> None:
    before = Footprint.of(server, client)
    body = multipart(part("file", b"\0" * 5000, "m.zip"))
    with open_upload(server, len(body), content_type=content_type) as sock:
        sock.sendall(body[:1000])
        started = time.monotonic()
        response = read_response(sock, timeout=10)
    assert 0.9 < time.monotonic() - started < 5
    message = assert_error_shape(response.as_httpx(), 408, "request_timeout")
    assert "1 s" in message
    assert_nothing_left(server, client, before)


def test_trickled_body_times_out(server: LiveServer, client: httpx.Client) -> None:
    before = Footprint.of(server, client)
    with open_upload(server, 5000) as sock:
        sender = threading.Thread(target=trickle, args=(sock, b"\0" * 5000, 0.2), daemon=True)
        sender.start()
        response = read_response(sock, timeout=10)
    sender.join(timeout=5)
    message = assert_error_shape(response.as_httpx(), 408, "request_timeout")
    assert "bytes/s" in message
    assert_nothing_left(server, client, before)
