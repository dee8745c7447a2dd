"""What a generation request asks for, and the checks TGI applies to it.

Unset sampling knobs are `None` (not their neutral value) so "not given" and "given as 1.0" stay
distinguishable, exactly as in TGI's request schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from app.generation.errors import ValidationFailed

# TGI's launcher defaults (--max-stop-sequences, --max-top-n-tokens).
DEFAULT_MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_TOP_N_TOKENS = 5
_MAX_SEED = 2**64 - 1
MAX_LOGIT_BIAS = 100.0  # OpenAI's bound on a logit_bias value
PENALTY_RANGE = 2.0  # frequency and presence penalties lie in [-2, 2] (TGI's and OpenAI's range)


@dataclass(frozen=True)
class GenerationParams:
    """One request's decoding parameters (TGI's `parameters` object, minus the HTTP-only ones).

    `max_new_tokens=None` means "as many as the context allows". Logprobs are always computed;
    `top_n_tokens` adds that many alternatives to every token and `decoder_input_details` adds
    the prompt tokens with their logprobs to the finish event.

    Two readings of "frequency penalty" exist and both are kept apart: `frequency_penalty` is
    TGI's (each token's share of prompt + generated text so far), `output_frequency_penalty` and
    `presence_penalty` are OpenAI's (counts over the generated tokens only). `logit_bias` is
    OpenAI's (token id, bias) pairs; `watermark` is TGI's green-list watermark.
    """

    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    output_frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: Sequence[tuple[int, float]] = field(default_factory=tuple)
    watermark: bool = False
    seed: int | None = None
    stop: Sequence[str] = field(default_factory=tuple)
    top_n_tokens: int = 0
    decoder_input_details: bool = False

    def __post_init__(self) -> None:
        # A tuple keeps the frozen dataclass really immutable (and hashable) whatever was passed.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "logit_bias", tuple(sorted(self.logit_bias)))

    @property
    def has_warpers(self) -> bool:
        """Whether any sampling-only knob (temperature, top_k, top_p, typical_p) is set."""
        return (
            (self.temperature is not None and self.temperature != 1.0)
            or (self.top_k is not None and self.top_k != 0)
            or (self.top_p is not None and self.top_p < 1.0)
            or (self.typical_p is not None and self.typical_p < 1.0)
        )

    def with_tgi_sampling(self) -> GenerationParams:
        """TGI samples whenever a warper is set even if `do_sample` is false; transformers does
        not (it ignores the warpers). The engine follows `do_sample` literally; an endpoint that
        wants TGI's behaviour calls this first."""
        if self.do_sample or not self.has_warpers:
            return self
        return replace(self, do_sample=True)

    @property
    def seeded_sampling(self) -> bool:
        """Sampling with a seed the client chose: a promise of the same text on every run."""
        return self.do_sample and self.seed is not None

    def new_token_budget(self, input_length: int, context_length: int) -> int:
        """max_new_tokens, or what the context leaves when it is unset (TGI's default)."""
        room = context_length - input_length
        return room if self.max_new_tokens is None else min(self.max_new_tokens, room)

    def validate(
        self,
        *,
        input_length: int,
        context_length: int | None = None,
        max_stop_sequences: int = DEFAULT_MAX_STOP_SEQUENCES,
        max_top_n_tokens: int = DEFAULT_MAX_TOP_N_TOKENS,
    ) -> None:
        """Raise ValidationFailed with TGI's message for the first problem found.

        `context_length` (the model's n_positions) enables the length checks; the engine itself
        validates without it, so a request past the context stops with finish_reason "length".
        """
        self.validate_sampling(max_stop_sequences=max_stop_sequences)
        if not 0 <= self.top_n_tokens <= max_top_n_tokens:
            raise ValidationFailed(
                f"`top_n_tokens` must be >= 0 and <= {max_top_n_tokens}. Given: {self.top_n_tokens}"
            )
        if input_length < 1:
            raise ValidationFailed("`inputs` cannot be empty")
        if context_length is None:
            return
        if input_length >= context_length:
            raise ValidationFailed(
                f"`inputs` must have less than {context_length} tokens. Given: {input_length}"
            )
        if self.max_new_tokens is not None and input_length + self.max_new_tokens > context_length:
            raise ValidationFailed(
                f"`inputs` tokens + `max_new_tokens` must be <= {context_length}. "
                f"Given: {input_length} `inputs` tokens and {self.max_new_tokens} "
                "`max_new_tokens`"
            )

    def validate_sampling(self, *, max_stop_sequences: int = DEFAULT_MAX_STOP_SEQUENCES) -> None:
        """The checks that do not depend on the prompt or the model."""
        if self.temperature is not None and not self.temperature > 0.0:
            raise ValidationFailed("`temperature` must be strictly positive")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0.0:
            raise ValidationFailed("`repetition_penalty` must be strictly positive")
        self._validate_penalties()
        if self.top_p is not None and not 0.0 < self.top_p < 1.0:
            raise ValidationFailed("`top_p` must be > 0.0 and < 1.0")
        if self.typical_p is not None and not 0.0 < self.typical_p < 1.0:
            raise ValidationFailed("`typical_p` must be > 0.0 and < 1.0")
        if self.top_k is not None and self.top_k <= 0:
            raise ValidationFailed("`top_k` must be strictly positive")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValidationFailed("`max_new_tokens` must be strictly positive")
        if self.seed is not None and not 0 <= self.seed <= _MAX_SEED:
            raise ValidationFailed(f"`seed` must be >= 0 and <= {_MAX_SEED}")
        if len(self.stop) > max_stop_sequences:
            raise ValidationFailed(
                f"`stop` supports up to {max_stop_sequences} stop sequences. "
                f"Given: {len(self.stop)}"
            )
        if any(not sequence for sequence in self.stop):
            raise ValidationFailed("`stop` sequences must not be empty")

    def _validate_penalties(self) -> None:
        penalties = {
            "frequency_penalty": self.frequency_penalty,
            "output_frequency_penalty": self.output_frequency_penalty,
            "presence_penalty": self.presence_penalty,
        }
        for name, value in penalties.items():
            if value is not None and not -PENALTY_RANGE <= value <= PENALTY_RANGE:
                raise ValidationFailed(
                    f"`{name}` must be >= -{PENALTY_RANGE} and <= {PENALTY_RANGE}"
                )
        if any(token_id < 0 for token_id, _ in self.logit_bias):
            raise ValidationFailed("`logit_bias` keys must be token ids (integers >= 0)")
        if any(not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS for _, bias in self.logit_bias):
            raise ValidationFailed(
                f"`logit_bias` values must be >= -{MAX_LOGIT_BIAS} and <= {MAX_LOGIT_BIAS}"
            )
