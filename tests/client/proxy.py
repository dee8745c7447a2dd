"""A real HTTP proxy in front of a LiveServer that can corrupt what it relays.

It forwards every request to the registry and records the request headers it saw; with
`corrupt_downloads` set it flips one byte in the body of every `/download` and `/files/`
answer, as a broken disk, cache or middlebox would, keeping the headers (ETag included).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

_HOP_BY_HOP = {
    "connection",
    "transfer-encoding",
    "keep-alive",
    "content-length",
    "content-encoding",
}


class CorruptingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.corrupt_downloads = False
        self.seen_headers: list[dict[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CorruptingProxy:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._relay()

            def do_POST(self) -> None:
                self._relay()

            def log_message(self, *_args: Any) -> None:
                pass

            def _relay(self) -> None:
                proxy.seen_headers.append({k.lower(): v for k, v in self.headers.items()})
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = httpx.request(
                    self.command, proxy.upstream + self.path, headers=headers, content=body
                )
                content = answer.content
                if proxy.corrupt_downloads and _is_download(self.path) and content:
                    middle = len(content) // 2
                    content = (
                        content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1 :]
                    )
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        return Handler


def _is_download(path: str) -> bool:
    return path.split("?")[0].endswith("/download") or "/files/" in path
