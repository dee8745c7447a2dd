"""OpenAI's legacy Completions request and response JSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.generation.params import MAX_LOGIT_BIAS, PENALTY_RANGE

MAX_STOP = 4
MAX_LOGPROBS = 5
MAX_N = 8
# Accepted (OpenAI's API has them) but without effect here: named in the Warning header.
IGNORED_FIELDS = ("best_of", "suffix", "user")
_MAX_NAMED_IN_WARNING = 16


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """Unknown keys are allowed (harnesses pass extra generation kwargs) and, like the fields in
    IGNORED_FIELDS, reported in a `Warning` response header rather than refused."""

    model_config = ConfigDict(extra="allow")

    model: str
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(None, ge=-PENALTY_RANGE, le=PENALTY_RANGE)
    presence_penalty: float | None = Field(None, ge=-PENALTY_RANGE, le=PENALTY_RANGE)
    logit_bias: dict[str, float] | None = None
    top_k: int | None = Field(None, ge=1, description="extension: top-k filtering")
    repetition_penalty: float | None = Field(None, gt=0, description="extension")
    best_of: int | None = Field(None, ge=1, description="accepted, ignored (Warning header)")
    suffix: str | None = Field(None, description="accepted, ignored (Warning header)")
    user: str | None = Field(None, description="accepted, ignored (Warning header)")

    @field_validator("logit_bias")
    @classmethod
    def _token_ids_and_bounds(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (bias or {}).items():
            if not key.isdigit():
                raise ValueError(
                    f"Invalid key in 'logit_bias': {key[:40]}. "
                    "You should only be submitting non-negative integers."
                )
            if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
                raise ValueError(
                    f"Invalid value for 'logit_bias' of token {key}: {value}. "
                    f"Values must be >= -{MAX_LOGIT_BIAS:g} and <= {MAX_LOGIT_BIAS:g}."
                )
        return bias

    @property
    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def token_bias(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(key), value) for key, value in (self.logit_bias or {}).items())

    def ignored_fields(self) -> list[str]:
        """The given fields that have no effect: IGNORED_FIELDS set to anything but their
        neutral value, then unknown keys (a null value counts as not given)."""
        given = [name for name in IGNORED_FIELDS if getattr(self, name) not in (None, 1)]
        extra = sorted(
            name for name, value in (self.model_extra or {}).items() if value is not None
        )
        return given + extra

    def ignored_warning(self) -> str | None:
        """RFC 7234's `Warning: 299 - "..."` (miscellaneous persistent warning) naming them."""
        names = self.ignored_fields()
        if not names:
            return None
        shown = [_header_safe(name) for name in names[:_MAX_NAMED_IN_WARNING]]
        more = len(names) - len(shown)
        listed = ", ".join(shown) + (f" and {more} more" if more else "")
        return f'299 - "ignored fields: {listed}"'


def _header_safe(name: str) -> str:
    """A field name as it may appear inside the header's quoted text."""
    if len(name) <= 64 and name.isascii() and name.isprintable() and not set(name) & set('"\\'):
        return name
    return "<unprintable name>"


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Logprobs | None
    finish_reason: Literal["stop", "length"] | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "checkpoint-registry"
    dtype: str | None = None  # served (CKPT_SERVING_DTYPE, else the stored one)
    stored_dtype: str | None = None
    serving_drift: dict[str, Any] | None = None  # None when served as stored


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
