"""OpenAI-compatible API: POST /v1/completions (plain and streamed), GET /v1/models."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from app.api.deps import GenerationDep
from app.api.openai_schemas import Completion, CompletionRequest, ModelCard, ModelList
from app.api.wire import OpenAIRoute, openai_error_body
from app.errors import AppError, NotFound
from app.services.completions import Completions

router = APIRouter(prefix="/v1", route_class=OpenAIRoute, tags=["generation (OpenAI)"])


@router.post("/completions", response_model=Completion)
async def create_completion(
    body: CompletionRequest, generation: GenerationDep, response: Response
) -> Completion | StreamingResponse:
    """`model` is any checkpoint ref: id, name, name:alias or name@version. Fields without
    effect here (`best_of`, `suffix`, `user`, unknown keys) are named in a `Warning` header."""
    completions = Completions(generation)
    warning = body.ignored_warning()
    headers = {} if warning is None else {"Warning": warning}
    if not body.stream:
        completion = await completions.create(body)
        response.headers.update(headers)
        return completion

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in completions.stream(body):
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"
        except AppError as exc:
            yield f"data: {json.dumps(openai_error_body(exc))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@router.get("/models", response_model=ModelList)
def list_models(generation: GenerationDep) -> ModelList:
    """The checkpoints that can serve completions, by `name@version`."""
    return Completions(generation).models()


@router.get("/models/{model:path}", response_model=ModelCard)
def get_model(model: str, generation: GenerationDep) -> ModelCard:
    for card in Completions(generation).models().data:
        if card.id == model:
            return card
    raise NotFound(f"The model `{model}` does not exist.", code="model_not_found")
