"""Real clients against a real server: huggingface_hub, openai, and text-generation's requests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import torch
from huggingface_hub import InferenceClient
from openai import OpenAI

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel
from tests.live_server import LiveServer

PROMPT = "the quick brown fox"


def greedy_ids(tiny: TinyModel, prompt: str, new_tokens: int) -> list[int]:
    ids = tiny.tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = tiny.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens
        )
    return [int(t) for t in out[0, ids.shape[1] :]]


def test_inference_client_plain_details_and_stream(
    server: LiveServer, tiny_ref: str, tiny: TinyModel
) -> None:
    hub = InferenceClient(model=f"{server.url}/models/{tiny_ref}")
    expected = greedy_ids(tiny, PROMPT, 12)
    text = tiny.tokenizer.decode(expected, skip_special_tokens=True)
    # POST to the model URL is TGI's root route: full text unless return_full_text is false.
    assert hub.text_generation(PROMPT, max_new_tokens=12) == PROMPT + text
    assert hub.text_generation(PROMPT, max_new_tokens=12, return_full_text=False) == text
    details = hub.text_generation(PROMPT, max_new_tokens=12, details=True)
    assert [token.id for token in details.details.tokens] == expected
    assert details.details.generated_tokens == 12
    assert details.details.finish_reason == "length"
    assert all(token.logprob <= 0 for token in details.details.tokens)
    streamed = list(hub.text_generation(PROMPT, max_new_tokens=12, stream=True))
    assert "".join(streamed) == text
    final = list(hub.text_generation(PROMPT, max_new_tokens=12, stream=True, details=True))[-1]
    assert final.generated_text == PROMPT + text
    assert final.details.finish_reason == "length"


def test_text_generation_client_request_shape(
    client: httpx.Client, tiny_ref: str, tiny: TinyModel
) -> None:
    """What text_generation.Client sends: every parameter, nulls included, to the root URL."""
    parameters: dict[str, Any] = {
        "best_of": None,
        "details": True,
        "decoder_input_details": False,
        "do_sample": False,
        "max_new_tokens": 6,
        "repetition_penalty": None,
        "return_full_text": False,
        "seed": None,
        "stop": [],
        "temperature": None,
        "top_k": None,
        "top_n_tokens": None,
        "top_p": None,
        "truncate": None,
        "typical_p": None,
        "watermark": False,
        "grammar": None,
    }
    response = client.post(
        f"/models/{tiny_ref}", json={"inputs": PROMPT, "parameters": parameters, "stream": False}
    )
    assert response.status_code == 200, response.text
    (first,) = response.json()
    assert [t["id"] for t in first["details"]["tokens"]] == greedy_ids(tiny, PROMPT, 6)
    assert {"id", "text", "logprob", "special"} <= set(first["details"]["tokens"][0])
    assert first["details"]["prefill"] == []


def test_openai_client_plain_and_streamed(
    server: LiveServer, tiny_ref: str, tiny: TinyModel
) -> None:
    openai = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    expected = tiny.tokenizer.decode(greedy_ids(tiny, PROMPT, 10), skip_special_tokens=True)
    completion = openai.completions.create(
        model=tiny_ref, prompt=PROMPT, max_tokens=10, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.choices[0].text == expected
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 10
    chunks = list(
        openai.completions.create(
            model=tiny_ref,
            prompt=PROMPT,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 10
    models = [m.id for m in openai.models.list()]
    assert "tiny@1" in models


def test_openai_echo_logprobs_and_n(client: httpx.Client, tiny_ref: str) -> None:
    response = client.post(
        "/v1/completions",
        json={
            "model": tiny_ref,
            "prompt": [PROMPT, "hello"],
            "max_tokens": 4,
            "n": 2,
            "seed": 7,
            "logprobs": 2,
            "echo": True,
        },
    )
    assert response.status_code == 200, response.text
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[0]["text"].startswith(PROMPT)
    assert choices[0]["logprobs"]["token_logprobs"][0] is None
    assert all(len(top) <= 2 for top in choices[0]["logprobs"]["top_logprobs"] if top)


def test_seeded_sampling_is_reproducible_alone_and_batched(
    client: httpx.Client, tiny_ref: str
) -> None:
    body = {
        "inputs": PROMPT,
        "parameters": {"do_sample": True, "seed": 1234, "max_new_tokens": 16, "temperature": 1.5},
    }
    alone = client.post("/generate", json=body).json()["generated_text"]

    async def together() -> list[str]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=120) as http:
            others = [
                http.post(
                    "/generate",
                    json={
                        "inputs": f"hello {i}",
                        "parameters": {"do_sample": True, "seed": i, "max_new_tokens": 12 + i},
                    },
                )
                for i in range(6)
            ]
            responses = await asyncio.gather(http.post("/generate", json=body), *others)
        return [r.json()["generated_text"] for r in responses]

    assert asyncio.run(together())[0] == alone
    assert client.post("/generate", json=body).json()["generated_text"] == alone


def test_stop_sequences_in_both_dialects(
    client: httpx.Client, tiny_ref: str, tiny: TinyModel
) -> None:
    full = tiny.tokenizer.decode(greedy_ids(tiny, PROMPT, 12), skip_special_tokens=True)
    stop = full[2:5]
    tgi = client.post(
        "/generate",
        json={
            "inputs": PROMPT,
            "parameters": {"max_new_tokens": 12, "stop": [stop], "details": True},
        },
    ).json()
    assert tgi["details"]["finish_reason"] == "stop_sequence"
    assert tgi["generated_text"].endswith(stop)
    oai = client.post(
        "/v1/completions",
        json={
            "model": tiny_ref,
            "prompt": PROMPT,
            "max_tokens": 12,
            "temperature": 0,
            "stop": stop,
        },
    ).json()
    assert oai["choices"][0]["finish_reason"] == "stop"
    assert stop not in oai["choices"][0]["text"]
    assert full.startswith(oai["choices"][0]["text"])


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"typical_p": 0}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"max_new_tokens": 1000}, "`inputs` tokens + `max_new_tokens` must be <= 64"),
        ({"best_of": 2}, "`best_of` != 1 is not allowed"),
    ],
)
def test_tgi_validation_errors(
    client: httpx.Client, tiny_ref: str, parameters: dict[str, Any], message: str
) -> None:
    response = client.post("/generate", json={"inputs": PROMPT, "parameters": parameters})
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "validation"
    assert response.json()["error"].startswith("Input validation error: ")
    assert message in response.json()["error"]
    streamed = client.post("/generate_stream", json={"inputs": PROMPT, "parameters": parameters})
    assert streamed.status_code == 200
    assert streamed.text.startswith('data:{"error":')
    assert message in streamed.text


def test_empty_inputs_and_malformed_body(client: httpx.Client, tiny_ref: str) -> None:
    empty = client.post("/generate", json={"inputs": ""})
    assert empty.status_code == 422
    assert empty.json()["error"] == "Input validation error: `inputs` cannot be empty"
    missing = client.post("/generate", json={"parameters": {}})
    assert missing.status_code == 422
    assert missing.json()["error_type"] == "validation"


def test_openai_errors(client: httpx.Client, tiny_ref: str) -> None:
    unknown = client.post("/v1/completions", json={"model": "ghost", "prompt": "x"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    bad = client.post("/v1/completions", json={"model": tiny_ref, "prompt": "x", "logprobs": 9})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert bad.json()["error"]["param"] == "logprobs"


def test_checkpoints_that_cannot_generate(
    client: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("mlp") / "mlp.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    assert upload_raw(client, path, "mlp").status_code == 201
    response = client.post("/models/mlp/generate", json={"inputs": "hi"})
    assert response.status_code == 409
    assert "cannot generate text" in response.json()["error"]
    assert client.post("/models/ghost/generate", json={"inputs": "hi"}).status_code == 404


def test_timing_headers_and_info(client: httpx.Client, tiny_ref: str) -> None:
    response = client.post(
        f"/models/{tiny_ref}/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": 3}}
    )
    assert response.headers["x-generated-tokens"] == "3"
    assert int(response.headers["x-prompt-tokens"]) > 0
    for header in ("x-total-time", "x-queue-time", "x-time-per-token", "x-inference-time"):
        assert int(response.headers[header]) >= 0
    info = client.get(f"/models/{tiny_ref}/info").json()
    assert info["model_id"] == "tiny@1"
    assert info["max_total_tokens"] == 64
    assert info["max_stop_sequences"] == 4
