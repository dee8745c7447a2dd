"""`Client`: the registry over HTTP, blocking."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Unpack

import httpx

from app.client import calls
from app.client.calls import Call, VerificationOptions
from app.client.connection import connection
from app.client.errors import error_from_response, unreachable
from app.client.models import (
    Checkpoint,
    CheckpointDiff,
    CheckpointPage,
    Completion,
    Generation,
    Health,
    ModelCard,
    StreamedToken,
    TensorList,
    Verification,
    VerificationList,
)
from app.client.sources import ProgressCallback, counted, upload_source
from app.client.transfer import Downloaded, DownloadTarget, GenerationParameters, sse_event

UPLOAD_READ_TIMEOUT = 900.0  # the server inspects the whole upload before it answers


class Client:
    """`url` defaults to CKPT_URL (else http://127.0.0.1:8000), `api_key` to CKPT_API_KEY."""

    def __init__(
        self, url: str | None = None, *, api_key: str | None = None, timeout: float | None = None
    ) -> None:
        conn = connection(url, api_key, timeout)
        self.url = conn.url
        self._http = httpx.Client(base_url=conn.url, headers=conn.headers, timeout=conn.timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def health(self) -> Health:
        """200 and 503 both describe the server's health; neither raises."""
        response = self._request(Call("GET", "/health"), ok=(503,))
        return Health.model_validate(response.json())

    def upload(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | str | None = None,
        deflate: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Checkpoint:
        """A file, an open binary file, or a folder (zipped while it is sent, STORED unless
        `deflate`). `created` on the result is False when the same bytes were already stored."""
        body = upload_source(source, deflate=deflate)
        params = calls.upload_params(
            name=name, filename=body.filename, metadata=metadata, config=config
        )
        headers = {"Content-Type": "application/octet-stream"}
        if body.size is not None:
            headers["Content-Length"] = str(body.size)
        response = self._request(
            Call("POST", "/v1/checkpoints", params, headers=headers),
            content=counted(body.chunks(), body.estimate, progress),
            timeout=httpx.Timeout(self._http.timeout.connect, read=UPLOAD_READ_TIMEOUT),
        )
        return Checkpoint.model_validate(
            {**response.json(), "created": response.status_code == 201}
        )

    def list(
        self,
        *,
        name: str | None = None,
        alias: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> CheckpointPage:
        """One page, newest first; pass `next_cursor` back as `cursor` for the next."""
        call = calls.list_checkpoints(name=name, alias=alias, limit=limit, cursor=cursor)
        return CheckpointPage.model_validate(self._json(call))

    def iter_checkpoints(
        self, *, name: str | None = None, alias: str | None = None, page_size: int = 50
    ) -> Iterator[Checkpoint]:
        """Every checkpoint, newest first, fetching pages as needed."""
        cursor: str | None = None
        while True:
            page = self.list(name=name, alias=alias, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get(self, ref: str) -> Checkpoint:
        return Checkpoint.model_validate(self._json(Call("GET", calls.checkpoint(ref))))

    def tensors(self, ref: str) -> TensorList:
        return TensorList.model_validate(self._json(Call("GET", calls.checkpoint(ref, "/tensors"))))

    def read_file(self, ref: str, path: str) -> bytes:
        """One stored file, in memory (for small files such as config.json)."""
        return self._request(Call("GET", calls.file_path(ref, path))).content

    def download(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        path: str | None = None,
        progress: ProgressCallback | None = None,
        expected_sha256: str | None = None,
    ) -> Downloaded:
        """Stream the upload (or the stored file `path`) to `dest` (a file, or a folder to put
        it in); raises ChecksumMismatch, leaving nothing, unless the bytes hash to the sha256
        the registry recorded (or `expected_sha256`)."""
        call = Call("GET", calls.file_path(ref, path))
        with self._stream(call) as response:
            target = DownloadTarget(response, Path(dest), progress, expected_sha256)
            try:
                for block in response.iter_bytes():
                    target.write(block)
            except BaseException:
                target.abort()
                raise
        return target.finish()

    def diff(self, ref_a: str, ref_b: str) -> CheckpointDiff:
        return CheckpointDiff.model_validate(self._json(calls.diff(ref_a, ref_b)))

    def set_alias(self, ref: str, alias: str) -> Checkpoint:
        return Checkpoint.model_validate(self._json(calls.alias(ref, alias, remove=False)))

    def delete_alias(self, ref: str, alias: str) -> Checkpoint:
        return Checkpoint.model_validate(self._json(calls.alias(ref, alias, remove=True)))

    def delete(self, ref: str) -> None:
        self._request(Call("DELETE", calls.checkpoint(ref)))

    def verify(self, ref: str, **options: Unpack[VerificationOptions]) -> Verification:
        """Queue a verification; `wait(view.id)` for its report."""
        call = Call("POST", calls.checkpoint(ref, "/verifications"))
        response = self._request(call, json=calls.verification_body(options))
        return Verification.model_validate(response.json())

    def verification(self, verification_id: str) -> Verification:
        path = f"/v1/verifications/{calls.ref_path(verification_id)}"
        return Verification.model_validate(self._json(Call("GET", path)))

    def verifications(self, ref: str) -> builtins.list[Verification]:
        call = Call("GET", calls.checkpoint(ref, "/verifications"))
        return VerificationList.model_validate(self._json(call)).items

    def wait(
        self,
        verification_id: str,
        *,
        timeout: float = 600,
        poll_seconds: float = 0.5,
        progress: Callable[[Verification], None] | None = None,
    ) -> Verification:
        """Poll until the verification finished; `progress` sees every state polled."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.verification(verification_id)
            if progress is not None:
                progress(view)
            if view.finished:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"verification {verification_id} unfinished after {timeout} s")
            time.sleep(poll_seconds)

    def report_html(self, verification_id: str) -> str:
        path = f"/v1/verifications/{calls.ref_path(verification_id)}"
        return self._request(Call("GET", path, {"format": "html"})).text

    def generate(
        self, ref: str | None, prompt: str, **parameters: Unpack[GenerationParameters]
    ) -> Generation:
        """TGI /generate on checkpoint `ref` (None: the server's default model)."""
        call = Call("POST", calls.generation_path(ref, "generate"))
        response = self._request(call, json=calls.generation_body(prompt, dict(parameters)))
        return Generation.model_validate(response.json())

    def generate_stream(
        self, ref: str | None, prompt: str, **parameters: Unpack[GenerationParameters]
    ) -> Iterator[StreamedToken]:
        """TGI /generate_stream: tokens as the server produces them."""
        call = Call("POST", calls.generation_path(ref, "generate_stream"))
        body = calls.generation_body(prompt, dict(parameters))
        with self._stream(call, json=body) as response:
            for line in response.iter_lines():
                event = sse_event(line)
                if event is not None:
                    yield StreamedToken.model_validate(event)

    def complete(self, model: str, prompt: str | builtins.list[str], **options: Any) -> Completion:
        """OpenAI /v1/completions (`max_tokens`, `temperature`, `seed`, `stop`, ...)."""
        body = calls.completion_body(model, prompt, options)
        response = self._request(Call("POST", "/v1/completions"), json=body)
        return Completion.model_validate(response.json())

    def models(self) -> builtins.list[ModelCard]:
        """OpenAI /v1/models: the checkpoints that can serve generation."""
        data = self._json(Call("GET", "/v1/models"))["data"]
        return [ModelCard.model_validate(card) for card in data]

    def info(self, ref: str | None = None) -> dict[str, Any]:
        """TGI /info of checkpoint `ref` (None: the server's default model)."""
        info: dict[str, Any] = self._json(Call("GET", calls.generation_path(ref, "info")))
        return info

    def _json(self, call: Call) -> Any:
        return self._request(call).json()

    def _request(self, call: Call, *, ok: tuple[int, ...] = (), **extra: Any) -> httpx.Response:
        try:
            response = self._http.request(
                call.method, call.path, params=call.params, headers=call.headers, **extra
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        if response.is_error and response.status_code not in ok:
            raise error_from_response(response)
        return response

    @contextmanager
    def _stream(self, call: Call, **extra: Any) -> Iterator[httpx.Response]:
        """A streamed response whose error status is raised before its body is used."""
        try:
            with self._http.stream(
                call.method, call.path, params=call.params, headers=call.headers, **extra
            ) as response:
                if response.is_error:
                    response.read()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
