"""Generation requests from the wire formats, turned into engine calls and back.

TGI and OpenAI requests both end here: resolve the checkpoint, tokenize, validate as TGI does,
then run through the shared continuous-batching engine.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import anyio

from app.api.tgi_schemas import (
    TGIDetails,
    TGIParameters,
    TGIPrefillToken,
    TGIRequest,
    TGIToken,
)
from app.generation import (
    FinishEvent,
    GenerationEngine,
    GenerationParams,
    GenerationResult,
    LoadedModel,
    TokenEvent,
    ValidationFailed,
)
from app.services.generation import GenerationCatalog, Servable


@dataclass(frozen=True)
class GenerationLimits:
    max_queue: int
    max_batch: int
    max_stop_sequences: int
    max_top_n_tokens: int
    max_new_tokens: int = 1024
    max_input_chars: int = 256 << 10


@dataclass(frozen=True)
class Prepared:
    """A validated request: which model, the prompt's token ids, the decoding parameters."""

    model: Servable
    loaded: LoadedModel
    input_ids: list[int]
    params: GenerationParams
    received_at: float
    validation_seconds: float


@dataclass(frozen=True)
class TGIJob:
    prepared: Prepared
    inputs: str
    details: bool
    return_full_text: bool

    @property
    def prompt_tokens(self) -> int:
        return len(self.prepared.input_ids)

    @property
    def received_at(self) -> float:
        return self.prepared.received_at

    @property
    def validation_seconds(self) -> float:
        return self.prepared.validation_seconds


@dataclass(frozen=True)
class Completed:
    result: GenerationResult
    device_type: str

    @property
    def text(self) -> str:
        return self.result.generated_text

    @property
    def generated_tokens(self) -> int:
        return self.result.generated_tokens

    @property
    def queue_seconds(self) -> float:
        return self.result.timings.queue

    @property
    def inference_seconds(self) -> float:
        return self.result.timings.inference

    def details(self) -> TGIDetails:
        result = self.result
        top = [[_tgi_token(t) for t in token.top_tokens] for token in result.tokens]
        return TGIDetails(
            finish_reason=result.finish_reason,
            generated_tokens=result.generated_tokens,
            seed=result.seed,
            prefill=[
                TGIPrefillToken(id=p.id, text=p.text, logprob=p.logprob) for p in result.prefill
            ],
            tokens=[_tgi_token(token) for token in result.tokens],
            top_tokens=top if any(top) else None,
        )


class TextGeneration:
    def __init__(
        self, catalog: GenerationCatalog, engine: GenerationEngine, limits: GenerationLimits
    ) -> None:
        self.catalog = catalog
        self.engine = engine
        self.limits = limits
        self.device_type = "gpu" if engine.device.type == "cuda" else "cpu"

    async def prepare(
        self,
        ref: str | None,
        prompt: str | list[int],
        params: GenerationParams,
        *,
        truncate: int | None = None,
    ) -> Prepared:
        received = time.monotonic()
        model = await anyio.to_thread.run_sync(self.catalog.resolve, ref)
        if isinstance(prompt, str) and not prompt:
            raise ValidationFailed("`inputs` cannot be empty")
        self._check_caps(prompt, params)
        params.validate_sampling(max_stop_sequences=self.limits.max_stop_sequences)
        loaded = await self.engine.model(model.id)
        ids = await self.engine.encode(loaded, prompt) if isinstance(prompt, str) else prompt
        if truncate is not None:
            if not 0 < truncate < loaded.context_length:
                raise ValidationFailed(
                    f"`truncate` must be strictly positive and less than "
                    f"{loaded.context_length}. Given: {truncate}"
                )
            ids = ids[-truncate:]
        cap = self.limits.max_new_tokens
        if params.max_new_tokens is None and loaded.context_length - len(ids) > cap:
            params = replace(params, max_new_tokens=cap)  # "what the context allows", capped
        self.engine.validate(loaded, ids, params)
        return Prepared(model, loaded, ids, params, received, time.monotonic() - received)

    def _check_caps(self, prompt: str | list[int], params: GenerationParams) -> None:
        """The server's own caps (CKPT_MAX_NEW_TOKENS, CKPT_MAX_INPUT_CHARS), checked before
        anything is tokenized or loaded."""
        if isinstance(prompt, str) and len(prompt) > self.limits.max_input_chars:
            raise ValidationFailed(
                f"`inputs` must have at most {self.limits.max_input_chars} characters. "
                f"Given: {len(prompt)}"
            )
        cap = self.limits.max_new_tokens
        if params.max_new_tokens is not None and params.max_new_tokens > cap:
            raise ValidationFailed(
                f"`max_new_tokens` must be <= {cap}. Given: {params.max_new_tokens}"
            )

    async def run(self, prepared: Prepared) -> Completed:
        result = await self.engine.generate(prepared.model.id, prepared.input_ids, prepared.params)
        return Completed(result, self.device_type)

    async def events(self, prepared: Prepared) -> AsyncIterator[TokenEvent | FinishEvent]:
        stream = await self.engine.stream(prepared.model.id, prepared.input_ids, prepared.params)
        async with stream:
            async for event in stream:
                yield event

    # -- TGI ------------------------------------------------------------------------------------

    async def tgi_job(
        self, ref: str | None, body: TGIRequest, *, full_text_default: bool
    ) -> TGIJob:
        p = body.parameters
        _refuse_unsupported(p)
        params = GenerationParams(
            max_new_tokens=p.max_new_tokens,
            do_sample=p.do_sample,
            temperature=p.temperature,
            top_k=p.top_k,
            top_p=p.top_p,
            typical_p=p.typical_p,
            repetition_penalty=p.repetition_penalty,
            frequency_penalty=p.frequency_penalty,
            watermark=p.watermark,
            seed=p.seed,
            stop=p.stop,
            top_n_tokens=p.top_n_tokens or 0,
            decoder_input_details=p.decoder_input_details,
        ).with_tgi_sampling()
        prepared = await self.prepare(ref, body.inputs, params, truncate=p.truncate)
        full_text = full_text_default if p.return_full_text is None else p.return_full_text
        return TGIJob(prepared, body.inputs, p.details or p.decoder_input_details, full_text)

    async def tgi_stream(self, job: TGIJob) -> AsyncIterator[dict[str, Any]]:
        """TGI's stream events; the last token's event also carries the text and details."""
        if job.prepared.params.decoder_input_details:
            raise ValidationFailed(
                "`decoder_input_details` == true is not supported when streaming tokens"
            )
        stream = await self.engine.stream(
            job.prepared.model.id, job.prepared.input_ids, job.prepared.params
        )
        async with stream:
            async for event in stream:
                if not isinstance(event, TokenEvent):
                    return  # a finish: already sent with its token
                finish = stream.finish_after()
                if finish is None:
                    yield _stream_event(event)  # sent now: the first token waits for nothing
                else:
                    yield self._last_stream_event(job, event, finish)

    @staticmethod
    def _last_stream_event(job: TGIJob, token: TokenEvent, finish: FinishEvent) -> dict[str, Any]:
        text = (job.inputs if job.return_full_text else "") + finish.generated_text
        details = None
        if job.details:
            details = {
                "finish_reason": finish.finish_reason,
                "generated_tokens": finish.generated_tokens,
                "seed": finish.seed,
                "input_length": job.prompt_tokens,
            }
        return _stream_event(token, generated_text=text, details=details)


def _refuse_unsupported(parameters: TGIParameters) -> None:
    """TGI parameters this server does not implement: refused, never silently dropped."""
    if parameters.best_of is not None and parameters.best_of != 1:
        raise ValidationFailed("`best_of` != 1 is not allowed for this endpoint")
    if parameters.grammar is not None:
        raise ValidationFailed("grammar is not supported")
    if parameters.adapter_id is not None:
        raise ValidationFailed(
            "`adapter_id` is not supported: an adapter is a checkpoint of its own, "
            "served at /models/{ref}/generate"
        )


def _tgi_token(token: Any) -> TGIToken:
    return TGIToken(id=token.id, text=token.text, logprob=token.logprob, special=token.special)


def _stream_event(
    token: TokenEvent, *, generated_text: str | None = None, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "index": token.index + 1,
        "token": _tgi_token(token).model_dump(),
        "generated_text": generated_text,
        "details": details,
    }
    if token.top_tokens:
        event["top_tokens"] = [_tgi_token(t).model_dump() for t in token.top_tokens]
    return event
