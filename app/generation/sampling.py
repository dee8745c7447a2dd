"""Choosing the next token of one sequence: transformers' processors, TGI's logprobs.

The processors are transformers' own classes in the order `generate` builds them (repetition
penalty; then, only when sampling, temperature, top-k, top-p, typical-p), and the choice is
`argmax` or `multinomial(softmax)` as in `generate`, so a request gives the tokens `generate`
gives. Each sequence is processed on its own row with its own `torch.Generator`, which is what
makes a seeded request independent of whatever else shares its batch.

The knobs `generate` lacks sit where TGI (and vLLM, for OpenAI's) put them: TGI's watermark
first, OpenAI's logit bias on the raw logits, the repetition penalty, TGI's frequency penalty,
OpenAI's frequency and presence penalties, then the warpers. `generate` runs processors passed
to it in `logits_processor` after its repetition penalty and before its warpers, so the same
order is what `generate(..., logits_processor=[...])` gives.

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


# TGI's watermark constants (its WATERMARK_GAMMA / WATERMARK_DELTA defaults and hash key).
WATERMARK_GAMMA = 0.5
WATERMARK_DELTA = 2.0
WATERMARK_HASH_KEY = 15485863


class WatermarkLogitsProcessor(LogitsProcessor):
    """TGI's watermark (Kirchenbauer et al. 2023): the previous token seeds a permutation of the
    vocabulary; its first `gamma` share (the green list) gets `delta` added to its logits. The
    permutation comes from a generator on the scores' device, so, as in TGI, a CUDA and a CPU
    server draw different green lists."""

    def __init__(self, device: torch.device) -> None:
        self.generator = torch.Generator(device=device)

    def green_list(
        self, previous_token: int, vocab_size: int, device: torch.device
    ) -> torch.Tensor:
        self.generator.manual_seed(WATERMARK_HASH_KEY * previous_token)
        permutation = torch.randperm(vocab_size, device=device, generator=self.generator)
        return permutation[: int(vocab_size * WATERMARK_GAMMA)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        green = self.green_list(int(input_ids[0, -1]), scores.shape[-1], scores.device)
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[-1, green] = True
        return torch.where(mask, scores + WATERMARK_DELTA, scores)  # type: ignore[return-value]


class LogitBiasLogitsProcessor(LogitsProcessor):
    """OpenAI's `logit_bias`: a fixed amount added to the logits of the listed token ids."""

    def __init__(self, bias: tuple[tuple[int, float], ...]) -> None:
        self.token_ids = [token_id for token_id, _ in bias]
        self.values = [value for _, value in bias]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        biased = scores.clone()
        ids = torch.tensor(self.token_ids, dtype=torch.long, device=scores.device)
        biased[:, ids] += scores.new_tensor(self.values)
        return biased  # type: ignore[return-value]


def _token_counts(token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """How often each vocabulary id occurs in each row of `token_ids`, as the scores' dtype."""
    counts = torch.zeros_like(scores)
    return counts.scatter_add_(1, token_ids, torch.ones_like(token_ids, dtype=scores.dtype))


class FrequencyPenaltyLogitsProcessor(LogitsProcessor):
    """TGI's frequency penalty (its batched `HeterogeneousFrequencyPenaltyLogitsProcessor`):
    every token's logit minus `penalty` times its share of the sequence so far, prompt
    included: `count / (prompt + generated length)`. In a TGI batch the share is taken over the
    padded batch width; here it is always the row's own length (what TGI gives it alone)."""

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        share = _token_counts(input_ids, scores) / input_ids.shape[1]
        return scores - share * scores.new_tensor(self.penalty)  # type: ignore[return-value]


class OpenAIPenaltiesLogitsProcessor(LogitsProcessor):
    """OpenAI's frequency and presence penalties over the generated tokens only (the prompt is
    skipped, as vLLM does): `logit[j] -= count[j] * frequency`, then `-= (count[j] > 0) *
    presence`."""

    def __init__(self, prompt_length: int, frequency: float, presence: float) -> None:
        self.prompt_length = prompt_length
        self.frequency = frequency
        self.presence = presence

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        counts = _token_counts(input_ids[:, self.prompt_length :], scores)
        penalized = scores - counts * scores.new_tensor(self.frequency)
        seen = (counts > 0).to(scores.dtype)
        return penalized - seen * scores.new_tensor(self.presence)  # type: ignore[return-value]


def build_processors(
    params: GenerationParams, *, prompt_length: int, device: torch.device
) -> list[LogitsProcessor]:
    """transformers' `_get_logits_processor` order, with TGI's and OpenAI's extra knobs where
    those servers apply them (see the module docstring)."""
    processors = _penalty_processors(params, prompt_length=prompt_length, device=device)
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


def _penalty_processors(
    params: GenerationParams, *, prompt_length: int, device: torch.device
) -> list[LogitsProcessor]:
    processors: list[LogitsProcessor] = []
    if params.watermark:
        processors.append(WatermarkLogitsProcessor(device))
    if params.logit_bias:
        processors.append(LogitBiasLogitsProcessor(tuple(params.logit_bias)))
    if params.repetition_penalty is not None and params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.frequency_penalty:
        processors.append(FrequencyPenaltyLogitsProcessor(params.frequency_penalty))
    if params.output_frequency_penalty or params.presence_penalty:
        processors.append(
            OpenAIPenaltiesLogitsProcessor(
                prompt_length,
                params.output_frequency_penalty or 0.0,
                params.presence_penalty or 0.0,
            )
        )
    return processors


class TokenChooser:
    def __init__(
        self,
        params: GenerationParams,
        seed: int | None,
        device: torch.device,
        *,
        prompt_length: int,
    ) -> None:
        self.processors = build_processors(params, prompt_length=prompt_length, device=device)
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
