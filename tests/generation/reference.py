"""What `model.generate` gives, with the logprobs TGI would report for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.generation import GenerationResult
from app.runtime.precision import compute_context


@dataclass(frozen=True)
class Reference:
    ids: list[int]
    logprobs: list[float]  # log-softmax of the processed scores at the chosen token


def generate_reference(model: Any, prompt: list[int], **kwargs: Any) -> Reference:
    """`model.generate` with greedy or sampling kwargs; with sampling, seed first
    (`torch.manual_seed(seed)`), the engine's per-request generator draws the same numbers."""
    with torch.inference_mode(), compute_context(model):  # autocast for a mixed model
        out = model.generate(
            torch.tensor([prompt]),
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )
    ids = out.sequences[0, len(prompt) :].tolist()
    logprobs = [
        float(torch.log_softmax(scores[0], dim=-1)[token])
        for scores, token in zip(out.scores, ids, strict=True)
    ]
    return Reference(ids, logprobs)


def greedy_reference(model: Any, prompt: list[int], max_new_tokens: int) -> Reference:
    return generate_reference(model, prompt, do_sample=False, max_new_tokens=max_new_tokens)


def assert_same(result: GenerationResult, reference: Reference) -> None:
    """Bit-exact: the same tokens and the same float logprobs."""
    assert [t.id for t in result.tokens] == reference.ids
    assert [t.logprob for t in result.tokens] == reference.logprobs
