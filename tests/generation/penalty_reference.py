"""Hand-written logits processors for the knobs `generate` lacks, written from the definitions
(TGI's and OpenAI's), token by token, to check the engine's tensor versions against.

Each returns a new scores tensor; `generate` runs them (given in `logits_processor`) after its
repetition penalty and before its warpers, which is the engine's order. Arithmetic is float32
in the same order as the definition, so results are comparable bit for bit.
"""

from __future__ import annotations

from collections import Counter

import torch

FLOAT = torch.float32


def _f32(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=FLOAT)


class HandFrequencyPenalty:
    """TGI: logit[t] -= penalty * (occurrences of t in prompt + generated) / their length."""

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        ids = input_ids[0].tolist()
        for token, count in Counter(ids).items():
            share = _f32(float(count)) / len(ids)
            out[0, token] = scores[0, token] - share * _f32(self.penalty)
        return out


class HandOpenAIPenalties:
    """OpenAI: logit[t] -= count_t * frequency + (count_t > 0) * presence, generated tokens
    only."""

    def __init__(self, prompt_length: int, frequency: float, presence: float) -> None:
        self.prompt_length = prompt_length
        self.frequency = frequency
        self.presence = presence

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        for token, count in Counter(input_ids[0, self.prompt_length :].tolist()).items():
            penalized = scores[0, token] - _f32(float(count)) * _f32(self.frequency)
            out[0, token] = penalized - _f32(self.presence)
        return out


class HandLogitBias:
    def __init__(self, bias: dict[int, float]) -> None:
        self.bias = bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        for token, value in self.bias.items():
            out[0, token] = scores[0, token] + _f32(value)
        return out


def green_list(previous_token: int, vocab_size: int) -> set[int]:
    """TGI's watermark green list after `previous_token`: gamma 0.5 of a permutation seeded
    by 15485863 * previous_token (CPU generator)."""
    generator = torch.Generator().manual_seed(15485863 * previous_token)
    return set(torch.randperm(vocab_size, generator=generator)[: vocab_size // 2].tolist())


class HandWatermark:
    """TGI's watermark: delta 2.0 added to every green-list logit."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = scores.clone()
        for token in green_list(int(input_ids[0, -1]), scores.shape[-1]):
            out[0, token] = scores[0, token] + _f32(2.0)
        return out


def green_share(prompt: list[int], generated: list[int], vocab_size: int) -> float:
    """The detector's statistic: the share of generated tokens in their predecessor's list."""
    sequence = prompt + generated
    hits = sum(
        sequence[i] in green_list(sequence[i - 1], vocab_size)
        for i in range(len(prompt), len(sequence))
    )
    return hits / len(generated)
