"""`AsyncClient`: the same calls as `Client`, for asyncio code."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO, Unpack

import anyio
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
from app.client.sync import UPLOAD_READ_TIMEOUT
from app.client.transfer import Downloaded, DownloadTarget, GenerationParameters, sse_event


class AsyncClient:
    """`url` defaults to CKPT_URL (else http://127.0.0.1:8000), `api_key` to CKPT_API_KEY."""

    def __init__(
        self, url: str | None = None, *, api_key: str | None = None, timeout: float | None = None
    ) -> None:
        conn = connection(url, api_key, timeout)
        self.url = conn.url
        self._http = httpx.AsyncClient(
            base_url=conn.url, headers=conn.headers, timeout=conn.timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def health(self) -> Health:
        response = await self._request(Call("GET", "/health"), ok=(503,))
        return Health.model_validate(response.json())

    async def upload(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
        config: dict[str, Any] | str | None = None,
        deflate: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Checkpoint:
        """As `Client.upload`; files are read (and folders zipped) on a worker thread."""
        body = upload_source(source, deflate=deflate)
        params = calls.upload_params(
            name=name, filename=body.filename, metadata=metadata, config=config
        )
        headers = {"Content-Type": "application/octet-stream"}
        if body.size is not None:
            headers["Content-Length"] = str(body.size)
        response = await self._request(
            Call("POST", "/v1/checkpoints", params, headers=headers),
            content=_off_thread(counted(body.chunks(), body.estimate, progress)),
            timeout=httpx.Timeout(self._http.timeout.connect, read=UPLOAD_READ_TIMEOUT),
        )
        return Checkpoint.model_validate(
            {**response.json(), "created": response.status_code == 201}
        )

    async def list(
        self,
        *,
        name: str | None = None,
        alias: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> CheckpointPage:
        call = calls.list_checkpoints(name=name, alias=alias, limit=limit, cursor=cursor)
        return CheckpointPage.model_validate(await self._json(call))

    async def get(self, ref: str) -> Checkpoint:
        return Checkpoint.model_validate(await self._json(Call("GET", calls.checkpoint(ref))))

    async def tensors(self, ref: str) -> TensorList:
        call = Call("GET", calls.checkpoint(ref, "/tensors"))
        return TensorList.model_validate(await self._json(call))

    async def read_file(self, ref: str, path: str) -> bytes:
        return (await self._request(Call("GET", calls.file_path(ref, path)))).content

    async def download(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        path: str | None = None,
        progress: ProgressCallback | None = None,
        expected_sha256: str | None = None,
    ) -> Downloaded:
        """As `Client.download`: raises ChecksumMismatch, leaving nothing, on a bad hash."""
        async with self._stream(Call("GET", calls.file_path(ref, path))) as response:
            target = DownloadTarget(response, Path(dest), progress, expected_sha256)
            try:
                async for block in response.aiter_bytes():
                    target.write(block)
            except BaseException:
                target.abort()
                raise
        return target.finish()

    async def diff(self, ref_a: str, ref_b: str) -> CheckpointDiff:
        return CheckpointDiff.model_validate(await self._json(calls.diff(ref_a, ref_b)))

    async def set_alias(self, ref: str, alias: str) -> Checkpoint:
        return Checkpoint.model_validate(await self._json(calls.alias(ref, alias, remove=False)))

    async def delete_alias(self, ref: str, alias: str) -> Checkpoint:
        return Checkpoint.model_validate(await self._json(calls.alias(ref, alias, remove=True)))

    async def delete(self, ref: str) -> None:
        await self._request(Call("DELETE", calls.checkpoint(ref)))

    async def verify(self, ref: str, **options: Unpack[VerificationOptions]) -> Verification:
        call = Call("POST", calls.checkpoint(ref, "/verifications"))
        response = await self._request(call, json=calls.verification_body(options))
        return Verification.model_validate(response.json())

    async def verification(self, verification_id: str) -> Verification:
        path = f"/v1/verifications/{calls.ref_path(verification_id)}"
        return Verification.model_validate(await self._json(Call("GET", path)))

    async def verifications(self, ref: str) -> builtins.list[Verification]:
        call = Call("GET", calls.checkpoint(ref, "/verifications"))
        return VerificationList.model_validate(await self._json(call)).items

    async def wait(
        self,
        verification_id: str,
        *,
        timeout: float = 600,
        poll_seconds: float = 0.5,
        progress: Callable[[Verification], None] | None = None,
    ) -> Verification:
        deadline = time.monotonic() + timeout
        while True:
            view = await self.verification(verification_id)
            if progress is not None:
                progress(view)
            if view.finished:
                return view
            if time.monotonic() > deadline:
                raise TimeoutError(f"verification {verification_id} unfinished after {timeout} s")
            await anyio.sleep(poll_seconds)

    async def report_html(self, verification_id: str) -> str:
        path = f"/v1/verifications/{calls.ref_path(verification_id)}"
        return (await self._request(Call("GET", path, {"format": "html"}))).text

    async def generate(
        self, ref: str | None, prompt: str, **parameters: Unpack[GenerationParameters]
    ) -> Generation:
        call = Call("POST", calls.generation_path(ref, "generate"))
        response = await self._request(call, json=calls.generation_body(prompt, dict(parameters)))
        return Generation.model_validate(response.json())

    async def generate_stream(
        self, ref: str | None, prompt: str, **parameters: Unpack[GenerationParameters]
    ) -> AsyncIterator[StreamedToken]:
        call = Call("POST", calls.generation_path(ref, "generate_stream"))
        body = calls.generation_body(prompt, dict(parameters))
        async with self._stream(call, json=body) as response:
            async for line in response.aiter_lines():
                event = sse_event(line)
                if event is not None:
                    yield StreamedToken.model_validate(event)

    async def complete(
        self, model: str, prompt: str | builtins.list[str], **options: Any
    ) -> Completion:
        body = calls.completion_body(model, prompt, options)
        response = await self._request(Call("POST", "/v1/completions"), json=body)
        return Completion.model_validate(response.json())

    async def models(self) -> builtins.list[ModelCard]:
        data = (await self._json(Call("GET", "/v1/models")))["data"]
        return [ModelCard.model_validate(card) for card in data]

    async def info(self, ref: str | None = None) -> dict[str, Any]:
        info: dict[str, Any] = await self._json(Call("GET", calls.generation_path(ref, "info")))
        return info

    async def _json(self, call: Call) -> Any:
        return (await self._request(call)).json()

    async def _request(
        self, call: Call, *, ok: tuple[int, ...] = (), **extra: Any
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                call.method, call.path, params=call.params, headers=call.headers, **extra
            )
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc
        if response.is_error and response.status_code not in ok:
            raise error_from_response(response)
        return response

    @asynccontextmanager
    async def _stream(self, call: Call, **extra: Any) -> AsyncIterator[httpx.Response]:
        try:
            async with self._http.stream(
                call.method, call.path, params=call.params, headers=call.headers, **extra
            ) as response:
                if response.is_error:
                    await response.aread()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise unreachable(self.url, exc) from exc


async def _off_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator (file reads, zipping) consumed without blocking the event loop."""
    while (block := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
        yield block
