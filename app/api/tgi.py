"""Text Generation Inference's API: /generate, /generate_stream, POST /, /info.

`/models/{ref}/...` serve one stored checkpoint (so `InferenceClient(model=".../models/<ref>")`
works); the bare routes serve CKPT_DEFAULT_MODEL, else the newest servable checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app import __version__
from app.api.deps import GenerationDep
from app.api.tgi_schemas import TGIInfo, TGIRequest, TGIResponse
from app.api.wire import TGIRoute, tgi_error_body
from app.errors import AppError
from app.services.text_generation import Completed, TextGeneration, TGIJob

router = APIRouter(route_class=TGIRoute, tags=["generation (TGI)"])


def _ref(request: Request) -> str | None:
    ref: str | None = request.path_params.get("ref")
    return ref


RefDep = Annotated[str | None, Depends(_ref)]


@router.post("/generate", response_model=TGIResponse)
@router.post("/models/{ref}/generate", response_model=TGIResponse)
async def generate(body: TGIRequest, ref: RefDep, generation: GenerationDep) -> JSONResponse:
    """Generate text; `details` adds tokens with logprobs, `decoder_input_details` the prefill."""
    job = await generation.tgi_job(ref, body, full_text_default=False)
    done = await generation.run(job.prepared)
    return JSONResponse(_response(job, done).wire(), headers=_timing_headers(job, done))


@router.post("/generate_stream")
@router.post("/models/{ref}/generate_stream")
async def generate_stream(body: TGIRequest, ref: RefDep, generation: GenerationDep) -> Response:
    """Server-sent events: one `data:{json}` per token; the last carries the text and details."""
    return _stream(generation, ref, body, full_text_default=False)


@router.post("/")
@router.post("/models/{ref}")
async def compat_generate(body: TGIRequest, ref: RefDep, generation: GenerationDep) -> Response:
    """TGI's root route: `stream: true` streams, otherwise a JSON array of one response."""
    if body.stream:
        return _stream(generation, ref, body, full_text_default=True)
    job = await generation.tgi_job(ref, body, full_text_default=True)
    done = await generation.run(job.prepared)
    return JSONResponse([_response(job, done).wire()], headers=_timing_headers(job, done))


@router.get("/info", response_model=TGIInfo)
@router.get("/models/{ref}/info", response_model=TGIInfo)
def info(ref: RefDep, generation: GenerationDep) -> TGIInfo:
    model = generation.catalog.resolve(ref)
    limits = generation.limits
    return TGIInfo(
        model_id=model.ref,
        model_sha=model.sha256,
        model_dtype=model.dtype,
        stored_dtype=model.stored_dtype,
        serving_drift=model.serving_drift,
        model_device_type=generation.device_type,
        max_concurrent_requests=limits.max_queue,
        max_stop_sequences=limits.max_stop_sequences,
        max_input_tokens=model.max_positions - 1,
        max_input_length=model.max_positions - 1,
        max_total_tokens=model.max_positions,
        max_batch_total_tokens=model.max_positions * limits.max_batch,
        max_batch_size=limits.max_batch,
        version=__version__,
    )


def _response(job: TGIJob, done: Completed) -> TGIResponse:
    text = (job.inputs if job.return_full_text else "") + done.text
    return TGIResponse(generated_text=text, details=done.details() if job.details else None)


def _timing_headers(job: TGIJob, done: Completed) -> dict[str, str]:
    total = time.monotonic() - job.received_at
    return {
        "x-compute-type": done.device_type,
        "x-compute-time": f"{total:.6f}",
        "x-compute-characters": str(len(job.inputs)),
        "x-total-time": str(round(total * 1000)),
        "x-validation-time": str(round(job.validation_seconds * 1000)),
        "x-queue-time": str(round(done.queue_seconds * 1000)),
        "x-inference-time": str(round(done.inference_seconds * 1000)),
        "x-time-per-token": str(
            round(done.inference_seconds * 1000 / max(done.generated_tokens, 1))
        ),
        "x-prompt-tokens": str(job.prompt_tokens),
        "x-generated-tokens": str(done.generated_tokens),
    }


def _stream(
    generation: TextGeneration, ref: str | None, body: TGIRequest, *, full_text_default: bool
) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        try:
            job = await generation.tgi_job(ref, body, full_text_default=full_text_default)
            async for event in generation.tgi_stream(job):
                yield _sse(event)
        except AppError as exc:  # TGI reports errors inside the stream, status stays 200
            yield _sse(tgi_error_body(exc))

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(payload: dict[str, Any]) -> str:
    return "data:" + json.dumps(payload, separators=(",", ":")) + "\n\n"
