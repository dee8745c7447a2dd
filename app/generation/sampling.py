"""Choosing the next token of one sequence: transformers' processors, TGI's logprobs.

The processors are transformers' own classes in the order `generate` builds them (repetition
penalty; then, only when sampling, temperature, top-k, top-p, typical-p), and the choice is
`argmax` or `multinomial(softmax)` as in `generate`, so a request gives the tokens `generate`
gives. Each sequence is processed on its own row with its own `torch.Generator`, which is what
makes a seeded request independent of whatever else shares its batch.

Logprobs follow TGI: log-softmax of the scores *after* the processors/warpers (for greedy
without repetition penalty that is the raw model distribution; with top-k/top-p the filtered
tokens get -inf and the rest are renormalized).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from app.generation.params import GenerationParams


@dataclass(frozen=True)
class Choice:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]  # (id, logprob), best first; empty unless asked for


def build_processors(params: GenerationParams) -> list[LogitsProcessor]:
    """transformers' `_get_logits_processor` order for the knobs TGI exposes."""
    processors: list[LogitsProcessor] = []
    if params.repetition_penalty is not None and params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if not params.do_sample:
        return processors  # warpers only apply when sampling (transformers' rule)
    if params.temperature is not None and params.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k is not None and params.top_k != 0:
        processors.append(TopKLogitsWarper(top_k=params.top_k))
    if params.top_p is not None and params.top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=params.top_p))
    if params.typical_p is not None and params.typical_p < 1.0:
        processors.append(TypicalLogitsWarper(mass=params.typical_p))
    return processors


class TokenChooser:
    def __init__(self, params: GenerationParams, seed: int | None, device: torch.device) -> None:
        self.processors = build_processors(params)
        self.top_n_tokens = params.top_n_tokens
        self.generator: torch.Generator | None = None
        if params.do_sample:
            if seed is None:
                raise ValueError("sampling needs a seed")
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)

    def choose(self, input_ids: torch.Tensor, logits: torch.Tensor) -> Choice:
        """`input_ids` [1, seq] (prompt + generated so far), `logits` [1, vocab] float32."""
        scores = logits
        for processor in self.processors:
            scores = processor(input_ids, scores)
        if self.generator is None:
            token = torch.argmax(scores, dim=-1)
        else:
            probs = torch.softmax(scores, dim=-1)
            token = torch.multinomial(probs, num_samples=1, generator=self.generator)
        token_id = int(token.item())
        logprobs = torch.log_softmax(scores, dim=-1)[0]
        top: tuple[tuple[int, float], ...] = ()
        if self.top_n_tokens:
            values, indices = torch.topk(logprobs, self.top_n_tokens)
            top = tuple(zip(indices.tolist(), values.tolist(), strict=True))
        return Choice(token_id, float(logprobs[token_id].item()), top)
