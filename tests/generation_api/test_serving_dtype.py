"""CKPT_SERVING_DTYPE=bfloat16: a float32 checkpoint served cast to bfloat16, said so in
`/info` and `/v1/models`, decoding exactly as `generate` on the cast model."""

from __future__ import annotations

import httpx
import pytest

from app.generation import load_model_folder
from app.generation.cache import cast_parameters
from tests.api.test_upload import upload_raw
from tests.families import build_family
from tests.generation.conftest import CPU
from tests.generation.reference import generate_reference
from tests.live_server import LiveServer
from tests.models import zip_folder

SERVER_SETTINGS = {"serving_dtype": "bfloat16"}
PROMPT = "the quick brown fox"


def test_float32_checkpoint_served_in_bfloat16(
    server: LiveServer, client: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("serving")
    folder = build_family("llama", root / "llama")
    response = upload_raw(client, zip_folder(folder, root / "llama.zip"), "llama")
    assert response.status_code == 201, response.text
    info = client.get("/models/llama/info").json()
    assert (info["model_dtype"], info["stored_dtype"]) == ("bfloat16", "float32")
    card = client.get("/v1/models/llama@1").json()
    assert (card["dtype"], card["stored_dtype"]) == ("bfloat16", "float32")

    generated = client.post(
        "/models/llama/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "details": True}},
    ).json()
    loaded = load_model_folder(folder, CPU)
    cast = cast_parameters(loaded.model, "bfloat16")
    expected = generate_reference(
        cast, list(loaded.tokenizer(PROMPT)["input_ids"]), do_sample=False, max_new_tokens=12
    )
    tokens = generated["details"]["tokens"]
    assert [t["id"] for t in tokens] == expected.ids
    assert [t["logprob"] for t in tokens] == expected.logprobs
    served = server.app.state.generation.engine.cache.peek(response.json()["id"])
    assert {str(p.dtype) for p in served.model.parameters()} == {"torch.bfloat16"}
