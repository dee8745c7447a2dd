"""Generation caps, in both dialects: TGI's {"error", "error_type"} 422 and OpenAI's 400."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel

MAX_NEW, MAX_CHARS, MAX_STOPS = 6, 1000, 2
SERVER_SETTINGS = {
    "max_new_tokens": MAX_NEW,
    "max_input_chars": MAX_CHARS,
    "max_stop_sequences": MAX_STOPS,
    "max_queue": 2,
    "max_batch": 1,
}
LONG_PROMPT = "hello world " * 60  # under the character cap, past the 64-token context


@pytest.fixture(scope="module")
def model(client: httpx.Client, tiny: TinyModel) -> str:
    assert upload_raw(client, tiny.zip_stored, "capped").status_code == 201
    return "capped"


def tgi(client: httpx.Client, model: str, inputs: str, **parameters: Any) -> httpx.Response:
    return client.post(
        f"/models/{model}/generate", json={"inputs": inputs, "parameters": parameters}
    )


def openai(client: httpx.Client, model: str, **body: Any) -> httpx.Response:
    return client.post("/v1/completions", json={"model": model, "prompt": "hello", **body})


def assert_tgi_validation(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_type"] == "validation"
    assert fragment in body["error"]


def assert_openai_invalid(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]


def test_max_new_tokens_over_the_cap(client: httpx.Client, model: str) -> None:
    expected = f"`max_new_tokens` must be <= {MAX_NEW}. Given: {MAX_NEW + 1}"
    assert_tgi_validation(tgi(client, model, "hello", max_new_tokens=MAX_NEW + 1), expected)
    assert_openai_invalid(openai(client, model, max_tokens=MAX_NEW + 1), expected)


def test_unset_max_new_tokens_is_capped(client: httpx.Client, model: str) -> None:
    response = tgi(client, model, "hello", max_new_tokens=None, details=True)
    assert response.status_code == 200, response.text
    assert 1 <= response.json()["details"]["generated_tokens"] <= MAX_NEW


def test_prompt_plus_new_tokens_past_the_context(client: httpx.Client, model: str) -> None:
    assert_tgi_validation(
        tgi(client, model, LONG_PROMPT, max_new_tokens=2), "must have less than 64"
    )
    assert_openai_invalid(openai(client, model, prompt=LONG_PROMPT, max_tokens=2), "64")


def test_input_characters_over_the_cap(client: httpx.Client, model: str) -> None:
    huge = "x" * (MAX_CHARS + 1)
    expected = f"`inputs` must have at most {MAX_CHARS} characters"
    assert_tgi_validation(tgi(client, model, huge, max_new_tokens=1), expected)
    assert_openai_invalid(openai(client, model, prompt=huge, max_tokens=1), expected)


def test_too_many_stop_sequences(client: httpx.Client, model: str) -> None:
    stops = ["a", "b", "c"]
    expected = f"`stop` supports up to {MAX_STOPS} stop sequences. Given: 3"
    assert_tgi_validation(tgi(client, model, "hello", max_new_tokens=1, stop=stops), expected)
    assert_openai_invalid(openai(client, model, stop=stops, max_tokens=1), expected)


def test_completions_beyond_what_the_queue_holds(client: httpx.Client, model: str) -> None:
    response = openai(client, model, prompt=["hello", "world"], n=2, max_tokens=1)
    assert_openai_invalid(response, "at most 3 completions")
    assert openai(client, model, prompt=["hello"], n=2, max_tokens=1).status_code == 200
