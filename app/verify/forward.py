"""Forward passes shared by the checks; each result is computed once per job and cached."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from app.runtime.precision import compute_context
from app.verify.base import CheckContext, LoadedCheckpoint

T = TypeVar("T")


def cached(ctx: CheckContext, key: str, compute: Callable[[], T]) -> T:
    if key not in ctx.cache:
        ctx.cache[key] = compute()
    value: T = ctx.cache[key]
    return value


@torch.inference_mode()
def prompt_logits(model: Any, inputs: list[list[int]], device: torch.device) -> list[torch.Tensor]:
    """Logits [positions, vocab] for each prompt, as float32 on the CPU."""
    results = []
    for ids in inputs:
        batch = torch.tensor([ids], dtype=torch.long, device=device)
        with compute_context(model):
            logits = model(input_ids=batch).logits[0]
        results.append(logits.float().cpu())
    return results


@torch.inference_mode()
def greedy_continuation(
    model: Any, ids: list[int], max_new_tokens: int, device: torch.device
) -> list[int]:
    """Exactly `max_new_tokens` greedy tokens (EOS does not stop it), capped by the context."""
    context = int(
        getattr(model.config, "n_positions", 0)
        or getattr(model.config, "max_position_embeddings", 1024)
    )
    steps = max(0, min(max_new_tokens, context - len(ids)))
    if steps == 0:
        return []
    batch = torch.tensor([ids], dtype=torch.long, device=device)
    with compute_context(model):
        output = model.generate(
            input_ids=batch,
            attention_mask=torch.ones_like(batch),
            do_sample=False,
            max_new_tokens=steps,
            min_new_tokens=steps,
            pad_token_id=0,
        )
    return [int(t) for t in output[0, len(ids) :].tolist()]


def subject_logits(ctx: CheckContext) -> list[torch.Tensor]:
    return _logits_of(ctx, ctx.subject, "subject")


def reference_logits(ctx: CheckContext) -> list[torch.Tensor]:
    if ctx.reference is None:
        raise ValueError("no reference checkpoint")
    return _logits_of(ctx, ctx.reference, "reference")


def _logits_of(ctx: CheckContext, loaded: LoadedCheckpoint, role: str) -> list[torch.Tensor]:
    return cached(
        ctx, f"logits:{role}", lambda: prompt_logits(loaded.model(), ctx.inputs, ctx.device)
    )


def subject_greedy(ctx: CheckContext) -> list[list[int]]:
    return _greedy_of(ctx, ctx.subject, "subject")


def reference_greedy(ctx: CheckContext) -> list[list[int]]:
    if ctx.reference is None:
        raise ValueError("no reference checkpoint")
    return _greedy_of(ctx, ctx.reference, "reference")


def _greedy_of(ctx: CheckContext, loaded: LoadedCheckpoint, role: str) -> list[list[int]]:
    steps = ctx.options.max_new_tokens
    return cached(
        ctx,
        f"greedy:{role}",
        lambda: [greedy_continuation(loaded.model(), ids, steps, ctx.device) for ids in ctx.inputs],
    )
