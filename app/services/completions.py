"""OpenAI-style completions on top of the shared generation engine."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from app.api.openai_schemas import (
    Completion,
    CompletionChoice,
    CompletionRequest,
    Logprobs,
    ModelCard,
    ModelList,
    Usage,
)
from app.errors import NotFound
from app.generation import (
    FinishEvent,
    GenerationParams,
    GenerationResult,
    TokenEvent,
    ValidationFailed,
)
from app.services.text_generation import Prepared, TextGeneration


@dataclass(frozen=True)
class _Choice:
    index: int
    prompt_index: int
    prepared: Prepared
    prompt_text: str


class Completions:
    def __init__(self, generation: TextGeneration) -> None:
        self.generation = generation

    def models(self) -> ModelList:
        servable = self.generation.catalog.servable()
        return ModelList(
            data=[
                ModelCard(
                    id=m.ref,
                    created=int(m.created_at.timestamp()),
                    dtype=m.dtype,
                    stored_dtype=m.stored_dtype,
                    serving_drift=m.serving_drift,
                )
                for m in servable
            ]
        )

    async def create(self, request: CompletionRequest) -> Completion:
        choices = await self._prepare(request)
        results = await asyncio.gather(*(self.generation.run(c.prepared) for c in choices))
        finished = [
            _final_choice(request, choice, done.result)
            for choice, done in zip(choices, results, strict=True)
        ]
        return Completion(
            id=_completion_id(),
            created=int(time.time()),
            model=request.model,
            choices=finished,
            usage=_usage(choices, [done.result.generated_tokens for done in results]),
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[dict[str, Any]]:
        """Completion chunks; with stream_options.include_usage a last chunk carries usage."""
        choices = await self._prepare(request)
        header = {
            "id": _completion_id(),
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model,
        }
        with_usage = bool(request.stream_options and request.stream_options.include_usage)
        generated = [0] * len(choices)
        async for index, text, finish in _merged(self.generation, choices, request):
            if finish is not None:
                generated[index] = finish.generated_tokens
            chunk = {
                **header,
                "choices": [
                    {
                        "index": index,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": _finish_reason(finish) if finish else None,
                    }
                ],
            }
            yield chunk | ({"usage": None} if with_usage else {})
        if with_usage:
            yield {**header, "choices": [], "usage": _usage(choices, generated).model_dump()}

    async def _prepare(self, request: CompletionRequest) -> list[_Choice]:
        if request.stream_options is not None and not request.stream:
            raise ValidationFailed(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled."
            )
        prompts = _prompts(request.prompt)
        most = self.generation.limits.max_queue + self.generation.limits.max_batch
        if len(prompts) * request.n > most:
            raise ValidationFailed(
                f"a request may ask for at most {most} completions (prompts x n). "
                f"Given: {len(prompts)} x {request.n}"
            )
        choices = []
        for prompt_index, prompt in enumerate(prompts):
            for sample in range(request.n):
                params = _params(request, sample)
                try:
                    prepared = await self.generation.prepare(request.model, prompt, params)
                except NotFound as exc:
                    raise NotFound(
                        f"The model `{request.model}` does not exist.", code="model_not_found"
                    ) from exc
                _check_bias_ids(request, prepared)
                text = prompt if isinstance(prompt, str) else await self._decode(prepared, prompt)
                index = prompt_index * request.n + sample
                choices.append(_Choice(index, prompt_index, prepared, text))
        return choices

    async def _decode(self, prepared: Prepared, ids: list[int]) -> str:
        return await self.generation.engine.decode(prepared.loaded, ids)


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]


def _params(request: CompletionRequest, sample: int) -> GenerationParams:
    temperature = 1.0 if request.temperature is None else request.temperature
    greedy = temperature == 0.0
    return GenerationParams(
        max_new_tokens=request.max_tokens,
        do_sample=not greedy,
        temperature=None if greedy or temperature == 1.0 else temperature,
        top_p=request.top_p if request.top_p is not None and request.top_p < 1.0 else None,
        top_k=request.top_k,
        repetition_penalty=request.repetition_penalty,
        output_frequency_penalty=request.frequency_penalty,
        presence_penalty=request.presence_penalty,
        logit_bias=request.token_bias,
        seed=None if request.seed is None else request.seed + sample,
        stop=request.stops,
        top_n_tokens=request.logprobs or 0,
        decoder_input_details=request.echo and request.logprobs is not None,
    )


def _check_bias_ids(request: CompletionRequest, prepared: Prepared) -> None:
    vocab_size = int(prepared.loaded.config.vocab_size)
    outside = [token_id for token_id, _ in request.token_bias if token_id >= vocab_size]
    if outside:
        raise ValidationFailed(
            f"Invalid key in 'logit_bias': {outside[0]} is not a token id of this model "
            f"(vocabulary size {vocab_size})."
        )


def _finish_reason(finish: FinishEvent | GenerationResult) -> Literal["stop", "length"]:
    return "length" if finish.finish_reason == "length" else "stop"


def _without_stop(text: str, stops: list[str], finish: FinishEvent | GenerationResult) -> str:
    """OpenAI leaves the stop sequence out of the text (TGI keeps it)."""
    if finish.finish_reason != "stop_sequence":
        return text
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text[:cut] if cut >= 0 else text


def _final_choice(
    request: CompletionRequest, choice: _Choice, result: GenerationResult
) -> CompletionChoice:
    text = _without_stop(result.generated_text, request.stops, result)
    if request.echo:
        text = choice.prompt_text + text
    logprobs = _logprobs(request, choice, result) if request.logprobs is not None else None
    return CompletionChoice(
        index=choice.index, text=text, logprobs=logprobs, finish_reason=_finish_reason(result)
    )


def _logprobs(request: CompletionRequest, choice: _Choice, result: GenerationResult) -> Logprobs:
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    if request.echo:
        for token in result.prefill:
            tokens.append(token.text)
            token_logprobs.append(token.logprob)
            top.append(None)
    for event in result.tokens:
        if event.special:
            continue
        tokens.append(event.text)
        token_logprobs.append(event.logprob)
        top.append({alt.text: alt.logprob for alt in event.top_tokens} or None)
    offsets, position = [], 0
    for text in tokens:
        offsets.append(position)
        position += len(text)
    return Logprobs(
        tokens=tokens, token_logprobs=token_logprobs, top_logprobs=top, text_offset=offsets
    )


def _usage(choices: list[_Choice], generated: list[int]) -> Usage:
    """Each prompt counts once, however many choices were sampled from it."""
    prompt_tokens = sum({c.prompt_index: len(c.prepared.input_ids) for c in choices}.values())
    completion_tokens = sum(generated)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


class _StopHoldback:
    """Holds back streamed text that might be the start of a stop sequence, so that a stop
    sequence never reaches the client (OpenAI excludes it) while other text flows at once."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.text = ""
        self.sent = 0

    def push(self, piece: str) -> str:
        self.text += piece
        safe = len(self.text) - self._held()
        out, self.sent = self.text[self.sent : safe], max(self.sent, safe)
        return out

    def finish(self, finish: FinishEvent) -> str:
        final = _without_stop(self.text, self.stops, finish)
        out = final[self.sent :] if len(final) > self.sent else ""
        self.sent = len(final)
        return out

    def _held(self) -> int:
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop), len(self.text)), 0, -1):
                if self.text.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest


async def _merged(
    generation: TextGeneration, choices: list[_Choice], request: CompletionRequest
) -> AsyncIterator[tuple[int, str, FinishEvent | None]]:
    """(choice index, text, finish) from all choices' streams as they arrive."""
    queue: asyncio.Queue[tuple[int, str, FinishEvent | None] | BaseException | None] = (
        asyncio.Queue()
    )

    async def pump(choice: _Choice) -> None:
        holdback = _StopHoldback(request.stops)
        try:
            if request.echo:
                await queue.put((choice.index, choice.prompt_text, None))
            async for event in generation.events(choice.prepared):
                if isinstance(event, TokenEvent):
                    text = "" if event.special else holdback.push(event.text)
                    if text:
                        await queue.put((choice.index, text, None))
                else:
                    await queue.put((choice.index, holdback.finish(event), event))
        except BaseException as exc:  # surfaced to the consumer below
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(choice)) for choice in choices]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
