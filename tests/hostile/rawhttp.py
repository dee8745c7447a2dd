"""HTTP/1.1 by hand on a socket: what httpx will not send (lies, stalls, half bodies)."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx

from tests.live_server import LiveServer


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def as_httpx(self) -> httpx.Response:
        """For the shared assertions, which take httpx responses."""
        return httpx.Response(self.status, headers=self.headers, content=self.body)


def open_upload(
    server: LiveServer,
    content_length: int | None,
    *,
    content_type: str = "application/octet-stream",
    query: str = "name=hostile",
) -> socket.socket:
    """Connect and send the request line and headers of an upload; the body is up to the test."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    lines = [
        f"POST /v1/checkpoints?{query} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Content-Type: {content_type}",
    ]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_response(sock: socket.socket, timeout: float = 30) -> RawResponse:
    """One response (Content-Length framed, as every JSON answer here is)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body[:length])


def trickle(sock: socket.socket, data: bytes, interval: float) -> None:
    """Send one byte every `interval` seconds until the server stops listening."""
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return
        time.sleep(interval)
