"""The OpenAI and huggingface_hub clients pass their key as a bearer token: served with a read
key, 401 with a wrong one."""

from __future__ import annotations

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError, TextGenerationError

from tests.auth.helpers import bearer, create_key
from tests.conftest import TinyModel
from tests.live_server import LiveServer

WRONG = "ckpt_000000000000_not-a-real-key"


@pytest.fixture(scope="module")
def read_key(server: LiveServer, client: httpx.Client, tiny: TinyModel) -> str:
    writer = create_key(server.settings, "uploader", "write").key
    response = client.post(
        "/v1/checkpoints?name=tiny",
        content=tiny.zip_stored.read_bytes(),
        headers={**bearer(writer), "Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    return create_key(server.settings, "reader", "read").key


def test_openai_client_with_a_read_key(server: LiveServer, read_key: str) -> None:
    client = openai.OpenAI(api_key=read_key, base_url=f"{server.url}/v1", max_retries=0)
    completion = client.completions.create(model="tiny", prompt="the quick", max_tokens=3)
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert [model.id for model in client.models.list()] == ["tiny@1"]


def test_openai_client_with_a_wrong_key(server: LiveServer, read_key: str) -> None:
    client = openai.OpenAI(api_key=WRONG, base_url=f"{server.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.completions.create(model="tiny", prompt="the quick", max_tokens=3)
    assert caught.value.status_code == 401
    assert caught.value.code == "unauthorized"


def test_inference_client_with_a_read_key(server: LiveServer, read_key: str) -> None:
    hub = InferenceClient(model=f"{server.url}/models/tiny", token=read_key)
    text = hub.text_generation("the quick", max_new_tokens=3, return_full_text=False)
    assert isinstance(text, str) and text
    assert len(list(hub.text_generation("the quick", max_new_tokens=3, stream=True))) == 3


def test_inference_client_with_a_wrong_key(server: LiveServer, read_key: str) -> None:
    hub = InferenceClient(model=f"{server.url}/models/tiny", token=WRONG)
    # The client reads TGI's error shape and raises its own error from the HTTP one.
    with pytest.raises(TextGenerationError, match="not valid") as caught:
        hub.text_generation("the quick", max_new_tokens=3)
    http_error = caught.value.__cause__
    assert isinstance(http_error, HfHubHTTPError) and http_error.response is not None
    assert http_error.response.status_code == 401
