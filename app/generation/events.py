"""What a generation stream yields: one TokenEvent per generated token, then one FinishEvent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FinishReason = Literal["length", "eos_token", "stop_sequence"]


@dataclass(frozen=True)
class TopToken:
    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True)
class TokenEvent:
    """A generated token. `text` is its incremental text: the texts of all tokens concatenate
    to the decode of the generated ids (special tokens included, e.g. "<|endoftext|>")."""

    index: int  # 0 for the first generated token
    id: int
    text: str
    logprob: float  # log-softmax after the logits processors/warpers, as TGI reports it
    special: bool
    top_tokens: tuple[TopToken, ...] = ()


@dataclass(frozen=True)
class PrefillToken:
    id: int
    text: str
    logprob: float | None  # None for the first prompt token (nothing predicts it)


@dataclass(frozen=True)
class Timings:
    """Seconds. queue: accepted → its prefill starts (includes loading a cold model);
    first_token: accepted → first token (TTFT); inference: prefill start → finish;
    time_per_token: inference / generated tokens; total: accepted → finish."""

    queue: float
    first_token: float
    inference: float
    time_per_token: float
    total: float


@dataclass(frozen=True)
class FinishEvent:
    finish_reason: FinishReason
    generated_tokens: int
    generated_text: str  # decode of the generated ids without special tokens (TGI)
    seed: int | None  # the sampling seed (chosen when not given); None for greedy, as in TGI
    prefill: tuple[PrefillToken, ...]  # empty unless decoder_input_details
    timings: Timings


GenerationEvent = TokenEvent | FinishEvent


@dataclass(frozen=True)
class GenerationResult:
    """A whole generation (the non-streaming endpoints' view of the same events)."""

    generated_text: str
    finish_reason: FinishReason
    generated_tokens: int
    seed: int | None
    tokens: tuple[TokenEvent, ...]
    prefill: tuple[PrefillToken, ...]
    timings: Timings

    @classmethod
    def of(cls, tokens: list[TokenEvent], finish: FinishEvent) -> GenerationResult:
        """The whole generation from a stream's token events and its finish event."""
        return cls(
            generated_text=finish.generated_text,
            finish_reason=finish.finish_reason,
            generated_tokens=finish.generated_tokens,
            seed=finish.seed,
            tokens=tuple(tokens),
            prefill=finish.prefill,
            timings=finish.timings,
        )
