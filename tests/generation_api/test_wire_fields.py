"""Every request field of both wire formats has its effect, or is refused, or (OpenAI only) is
named in a `Warning` header: traced over real HTTP against `generate` on the same weights.

Fields covered elsewhere: TGI `details`, `return_full_text`, `stop`, `seed`, `best_of` and the
TGI validation messages, OpenAI `echo`, `logprobs`, `n`, `stop`, `stream`, `stream_options`
and `max_tokens` in test_clients.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch
from transformers import LogitsProcessorList

from tests.conftest import TinyModel
from tests.generation.penalty_reference import (
    HandFrequencyPenalty,
    HandLogitBias,
    HandOpenAIPenalties,
    HandWatermark,
)
from tests.generation.reference import generate_reference

PROMPT = "the the the quick brown fox and the lazy dog"
NEW = 16
SEED = 3


def prompt_ids(tiny: TinyModel, text: str = PROMPT) -> list[int]:
    ids: list[int] = tiny.tokenizer(text).input_ids
    return ids


def reference(
    tiny: TinyModel, *processors: Any, prompt: list[int] | None = None, **kwargs: Any
) -> list[int]:
    """`generate`'s tokens; `seed` in kwargs seeds torch first and turns sampling on."""
    seed = kwargs.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    return generate_reference(
        tiny.model,
        prompt_ids(tiny) if prompt is None else prompt,
        do_sample=seed is not None,
        max_new_tokens=NEW,
        logits_processor=LogitsProcessorList(processors),
        **kwargs,
    ).ids


def tgi(
    client: httpx.Client, ref: str, parameters: dict[str, Any], *, inputs: str = PROMPT
) -> httpx.Response:
    body = {"inputs": inputs, "parameters": {"max_new_tokens": NEW, "details": True, **parameters}}
    return client.post(f"/models/{ref}/generate", json=body)


def tgi_ids(
    client: httpx.Client, ref: str, parameters: dict[str, Any], *, inputs: str = PROMPT
) -> list[int]:
    response = tgi(client, ref, parameters, inputs=inputs)
    assert response.status_code == 200, response.text
    return [token["id"] for token in response.json()["details"]["tokens"]]


def tgi_reference(
    tiny: TinyModel, *, freq: float = 0.0, watermark: bool = False, **kwargs: Any
) -> list[int]:
    """`generate` plus TGI's frequency penalty and watermark, written by hand."""
    processors: list[Any] = [HandWatermark()] if watermark else []
    if freq:
        processors.append(HandFrequencyPenalty(freq))
    return reference(tiny, *processors, **kwargs)


# Seeded sampling with no warper at all does not equal `generate` (a divergence from the second
# token on, outside these fields: see README); with top-k 40 it does, so sampled cases use it.
K = {"top_k": 40}
# field: (TGI parameters, the reference's arguments, the reference's arguments without it)
TGI_FIELDS: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "frequency_penalty": ({"frequency_penalty": 1.5}, {"freq": 1.5}, {}),
    "watermark": ({"watermark": True}, {"watermark": True}, {}),
    "repetition_penalty": ({"repetition_penalty": 1.5}, {"repetition_penalty": 1.5}, {}),
    "seed": ({"seed": SEED + 1, **K}, {"seed": SEED + 1, **K}, {"seed": SEED, **K}),
    # A TGI warper turns sampling on by itself (no do_sample needed).
    "top_k": ({"top_k": 3, "seed": SEED}, {"top_k": 3, "seed": SEED}, {"seed": SEED, **K}),
    "temperature": (
        {"temperature": 0.5, "seed": SEED, **K},
        {"temperature": 0.5, "seed": SEED, **K},
        {"seed": SEED, **K},
    ),
    "top_p": (
        {"top_p": 0.3, "seed": SEED, **K},
        {"top_p": 0.3, "seed": SEED, **K},
        {"seed": SEED, **K},
    ),
    "typical_p": (
        {"typical_p": 0.3, "seed": SEED, **K},
        {"typical_p": 0.3, "seed": SEED, **K},
        {"seed": SEED, **K},
    ),
}
WATERMARKED = "a checkpoint registry"  # greedy after PROMPT repeats one token, green or not


@pytest.mark.parametrize("field", list(TGI_FIELDS))
def test_tgi_field_reaches_generation(
    client: httpx.Client, tiny_ref: str, tiny: TinyModel, field: str
) -> None:
    parameters, with_field, without = TGI_FIELDS[field]
    text = WATERMARKED if field == "watermark" else PROMPT
    prompt = prompt_ids(tiny, text)
    expected = tgi_reference(tiny, prompt=prompt, **with_field)
    assert tgi_ids(client, tiny_ref, parameters, inputs=text) == expected
    assert expected != tgi_reference(tiny, prompt=prompt, **without)


def test_tgi_do_sample(client: httpx.Client, tiny_ref: str, tiny: TinyModel) -> None:
    sampled = tgi_ids(client, tiny_ref, {"do_sample": True, "seed": SEED})
    assert sampled != tgi_ids(client, tiny_ref, {})
    assert sampled == tgi_ids(client, tiny_ref, {"do_sample": True, "seed": SEED})


@pytest.mark.xfail(strict=True, reason="seeded sampling without a warper diverges from generate")
def test_tgi_do_sample_without_warpers_equals_generate(
    client: httpx.Client, tiny_ref: str, tiny: TinyModel
) -> None:
    assert tgi_ids(client, tiny_ref, {"do_sample": True, "seed": SEED}) == reference(
        tiny, seed=SEED
    )


def test_tgi_truncate_top_n_tokens_and_prefill(
    client: httpx.Client, tiny_ref: str, tiny: TinyModel
) -> None:
    truncated = tgi(client, tiny_ref, {"truncate": 3})
    assert truncated.headers["x-prompt-tokens"] == "3"
    tail = prompt_ids(tiny)[-3:]
    assert [t["id"] for t in truncated.json()["details"]["tokens"]] == reference(tiny, prompt=tail)
    details = tgi(client, tiny_ref, {"top_n_tokens": 3, "decoder_input_details": True})
    body = details.json()["details"]
    assert all(len(token_top) == 3 for token_top in body["top_tokens"])
    assert [top[0]["id"] for top in body["top_tokens"]] == [t["id"] for t in body["tokens"]]
    assert [p["id"] for p in body["prefill"]] == prompt_ids(tiny)
    assert body["prefill"][0]["logprob"] is None and body["prefill"][1]["logprob"] < 0


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (
            {"grammar": {"type": "json", "value": {}}},
            "Input validation error: grammar is not supported",
        ),
        (
            {"adapter_id": "my-lora"},
            "Input validation error: `adapter_id` is not supported: an adapter is a checkpoint "
            "of its own, served at /models/{ref}/generate",
        ),
        (
            {"frequency_penalty": 2.5},
            "Input validation error: `frequency_penalty` must be >= -2.0 and <= 2.0",
        ),
        (
            {"frequency_penalty": -2.01},
            "Input validation error: `frequency_penalty` must be >= -2.0 and <= 2.0",
        ),
        (
            {"min_p": 0.1},
            "Input validation error: parameters.min_p: Extra inputs are not permitted",
        ),
    ],
)
def test_tgi_refuses_what_it_does_not_do(
    client: httpx.Client, tiny_ref: str, parameters: dict[str, Any], message: str
) -> None:
    response = tgi(client, tiny_ref, parameters)
    assert response.status_code == 422, response.text
    assert response.json() == {"error": message, "error_type": "validation"}
    streamed = client.post(
        f"/models/{tiny_ref}/generate_stream", json={"inputs": PROMPT, "parameters": parameters}
    )
    if "Extra inputs" in message:  # refused by the schema, before the stream starts
        assert (streamed.status_code, streamed.json()["error"]) == (422, message)
    else:  # TGI reports errors found after the stream started inside it
        assert streamed.status_code == 200
        assert streamed.text == f'data:{{"error":"{message}","error_type":"validation"}}\n\n'


def test_tgi_unknown_top_level_key_and_neutral_values(client: httpx.Client, tiny_ref: str) -> None:
    response = client.post(f"/models/{tiny_ref}/generate", json={"inputs": PROMPT, "model": "x"})
    assert response.status_code == 422
    assert (
        response.json()["error"] == "Input validation error: model: Extra inputs are not permitted"
    )
    neutral = {"watermark": False, "grammar": None, "adapter_id": None, "best_of": 1}
    assert tgi_ids(client, tiny_ref, neutral) == tgi_ids(client, tiny_ref, {})


def completion(client: httpx.Client, ref: str, **fields: Any) -> httpx.Response:
    body = {"model": ref, "prompt": PROMPT, "max_tokens": NEW, **fields}
    return client.post("/v1/completions", json=body)


def completion_text(client: httpx.Client, ref: str, **fields: Any) -> str:
    response = completion(client, ref, **fields)
    assert response.status_code == 200, response.text
    assert "warning" not in response.headers
    text: str = response.json()["choices"][0]["text"]
    return text


def decoded(tiny: TinyModel, ids: list[int]) -> str:
    text: str = tiny.tokenizer.decode(ids, skip_special_tokens=True)
    return text


# (OpenAI fields, the generate reference's processors and kwargs, the same without the field)
def _openai_cases(tiny: TinyModel) -> dict[str, tuple[dict[str, Any], list[int], list[int]]]:
    length = len(prompt_ids(tiny))
    greedy = reference(tiny)
    sampled = reference(tiny, seed=SEED, **K)
    return {
        "frequency_penalty": (
            {"temperature": 0, "frequency_penalty": 1.5},
            reference(tiny, HandOpenAIPenalties(length, 1.5, 0.0)),
            greedy,
        ),
        "presence_penalty": (
            {"temperature": 0, "presence_penalty": 2.0},
            reference(tiny, HandOpenAIPenalties(length, 0.0, 2.0)),
            greedy,
        ),
        "logit_bias": (
            {"temperature": 0, "logit_bias": {"42": 4.0, str(greedy[0]): -100}},
            reference(tiny, HandLogitBias({42: 4.0, greedy[0]: -100.0})),
            greedy,
        ),
        "repetition_penalty": (
            {"temperature": 0, "repetition_penalty": 1.5},
            reference(tiny, repetition_penalty=1.5),
            greedy,
        ),
        "temperature": (
            {"temperature": 0.5, "seed": SEED, **K},
            reference(tiny, seed=SEED, temperature=0.5, **K),
            sampled,
        ),
        "top_p": (
            {"top_p": 0.3, "seed": SEED, **K},
            reference(tiny, seed=SEED, top_p=0.3, **K),
            sampled,
        ),
        "seed": ({"seed": SEED, **K}, sampled, reference(tiny, seed=SEED + 1, **K)),
    }


@pytest.mark.parametrize(
    "field",
    [
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "repetition_penalty",
        "temperature",
        "top_p",
        "seed",
    ],
)
def test_openai_field_reaches_generation(
    client: httpx.Client, tiny_ref: str, tiny: TinyModel, field: str
) -> None:
    fields, expected, without = _openai_cases(tiny)[field]
    assert completion_text(client, tiny_ref, **fields) == decoded(tiny, expected)
    assert expected != without


def test_openai_top_k_extension(client: httpx.Client, tiny_ref: str, tiny: TinyModel) -> None:
    """top_k=1 makes seeded sampling greedy: its text is the greedy text, not the sampled one."""
    text = completion_text(client, tiny_ref, top_k=1, seed=SEED)
    assert text == decoded(tiny, reference(tiny))
    assert text != decoded(tiny, reference(tiny, seed=SEED))


def test_openai_ignored_fields_are_named_in_a_warning(client: httpx.Client, tiny_ref: str) -> None:
    plain = completion(client, tiny_ref, temperature=0)
    assert "warning" not in plain.headers
    extras = {"user": "u-1", "suffix": " end", "best_of": 2, "min_p": 0.1, "ignore_eos": None}
    ignored = completion(client, tiny_ref, temperature=0, **extras)
    assert ignored.status_code == 200
    assert ignored.headers["warning"] == '299 - "ignored fields: best_of, suffix, user, min_p"'
    assert ignored.json()["choices"] == plain.json()["choices"]
    with client.stream(
        "POST",
        "/v1/completions",
        json={"model": tiny_ref, "prompt": PROMPT, "max_tokens": 2, "stream": True, "user": "u"},
    ) as streamed:
        assert streamed.headers["warning"] == '299 - "ignored fields: user"'
        assert streamed.read().endswith(b"data: [DONE]\n\n")
    neutral = completion(client, tiny_ref, temperature=0, best_of=1, user=None)
    assert "warning" not in neutral.headers


def test_openai_warning_names_at_most_sixteen_fields(client: httpx.Client, tiny_ref: str) -> None:
    extras = {f"x{i:02d}": i for i in range(20)}
    response = completion(client, tiny_ref, max_tokens=1, **extras, **{'bad"name': 1})
    named = ", ".join(f"x{i:02d}" for i in range(15))
    assert (
        response.headers["warning"]
        == f'299 - "ignored fields: <unprintable name>, {named} and 5 more"'
    )


@pytest.mark.parametrize(
    ("fields", "status", "param", "message"),
    [
        (
            {"stream_options": {"include_usage": True}},
            400,
            None,
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
        ),
        (
            {"logit_bias": {"abc": 1}},
            400,
            "logit_bias",
            "logit_bias: Value error, Invalid key in 'logit_bias': abc. "
            "You should only be submitting non-negative integers.",
        ),
        (
            {"logit_bias": {"5": 101}},
            400,
            "logit_bias",
            "logit_bias: Value error, Invalid value for 'logit_bias' of token 5: 101.0. "
            "Values must be >= -100 and <= 100.",
        ),
        (
            {"logit_bias": {"99999": 1}},
            400,
            None,
            "Invalid key in 'logit_bias': 99999 is not a token id of this model "
            "(vocabulary size 300).",
        ),
        (
            {"frequency_penalty": 2.5},
            400,
            "frequency_penalty",
            "frequency_penalty: Input should be less than or equal to 2",
        ),
        (
            {"presence_penalty": -3},
            400,
            "presence_penalty",
            "presence_penalty: Input should be greater than or equal to -2",
        ),
    ],
)
def test_openai_refusals(
    client: httpx.Client,
    tiny_ref: str,
    fields: dict[str, Any],
    status: int,
    param: str | None,
    message: str,
) -> None:
    response = completion(client, tiny_ref, **fields)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["message"], error["param"], error["type"]) == (
        message,
        param,
        "invalid_request_error",
    )
