"""Text Generation Inference's request and response JSON."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TGI_DEFAULT_MAX_NEW_TOKENS = 100


class TGIParameters(BaseModel):
    """TGI's GenerateParameters. Every field reaches generation or, set to what this server does
    not do (`best_of` > 1, `grammar`, `adapter_id`), is refused with 422; so is an unknown key."""

    model_config = ConfigDict(extra="forbid")

    adapter_id: str | None = None
    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: dict[str, Any] | None = None
    max_new_tokens: int | None = TGI_DEFAULT_MAX_NEW_TOKENS
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = Field(None, ge=0)
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False


def absent_parameters() -> TGIParameters:
    """What TGI (2.x and later) uses when a request has no `parameters` object: sampling."""
    return TGIParameters(do_sample=True)


class TGIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str
    parameters: TGIParameters = Field(default_factory=absent_parameters)
    stream: bool = False


class TGIToken(BaseModel):
    id: int
    text: str
    logprob: float | None
    special: bool


class TGIPrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None


class TGIDetails(BaseModel):
    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[TGIPrefillToken]
    tokens: list[TGIToken]
    top_tokens: list[list[TGIToken]] | None = None


class TGIResponse(BaseModel):
    generated_text: str
    details: TGIDetails | None = None

    def wire(self) -> dict[str, Any]:
        """TGI omits `details` unless asked for, and `top_tokens` when empty."""
        body = self.model_dump()
        if body["details"] is None:
            del body["details"]
        elif body["details"]["top_tokens"] is None:
            del body["details"]["top_tokens"]
        return body


class TGIInfo(BaseModel):
    model_id: str
    model_sha: str | None
    model_dtype: str
    stored_dtype: str | None = None  # model_dtype differs when CKPT_SERVING_DTYPE casts it
    serving_drift: dict[str, Any] | None = None  # None when served as stored
    model_device_type: str
    model_pipeline_tag: str | None = "text-generation"
    max_concurrent_requests: int
    max_best_of: int = 1
    max_stop_sequences: int
    max_input_tokens: int
    max_input_length: int
    max_total_tokens: int
    max_client_batch_size: int = 1
    validation_workers: int = 1
    waiting_served_ratio: float = 0.0
    max_batch_total_tokens: int
    max_waiting_tokens: int = 0
    max_batch_size: int | None
    router: str = "checkpoint-registry"
    version: str
    sha: str | None = None
    docker_label: str | None = None
