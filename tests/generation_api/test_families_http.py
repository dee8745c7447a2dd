"""Every family over a real server with real clients: greedy text over TGI `/generate` and the
`openai` client equals `model.generate`'s; seeded sampling is identical alone and batched; half
precision and mixed checkpoints are served in their stored dtypes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from openai import OpenAI

from app.generation import LoadedModel, load_model_folder
from tests.api.test_upload import upload_raw
from tests.families import FAMILIES, build_family, build_family_model
from tests.generation.conftest import CPU
from tests.generation.reference import Reference, generate_reference
from tests.live_server import LiveServer
from tests.models import zip_folder

PROMPT = "the quick brown fox"
VARIANTS = [
    *(f"{family}-float32" for family in FAMILIES),
    "qwen2-bfloat16",
    "phi3-float16",
    "llama-mixed",
]
SEEDED = {"do_sample": True, "seed": 1234, "max_new_tokens": 16, "temperature": 1.2}


@dataclass(frozen=True)
class Uploaded:
    ref: str
    checkpoint: dict[str, Any]
    loaded: LoadedModel  # the same folder, loaded here for `generate`

    def greedy(self, new_tokens: int) -> Reference:
        prompt = list(self.loaded.tokenizer(PROMPT)["input_ids"])
        return generate_reference(
            self.loaded.model, prompt, do_sample=False, max_new_tokens=new_tokens
        )


class Uploads:
    def __init__(self, client: httpx.Client, root: Path) -> None:
        self.client, self.root = client, root
        self._done: dict[str, Uploaded] = {}

    def get(self, variant: str) -> Uploaded:
        if variant not in self._done:
            family, dtype = variant.rsplit("-", 1)
            folder = build_family(family, self.root / variant, dtype=dtype)
            response = upload_raw(
                self.client, zip_folder(folder, self.root / f"{variant}.zip"), variant
            )
            assert response.status_code == 201, response.text
            loaded = load_model_folder(folder, CPU)
            if dtype == "mixed":  # what was saved, each tensor in its own dtype
                loaded = LoadedModel.of(build_family_model(family, dtype=dtype), loaded.tokenizer)
            self._done[variant] = Uploaded(variant, response.json(), loaded)
        return self._done[variant]


@pytest.fixture(scope="module")
def uploads(client: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> Uploads:
    return Uploads(client, tmp_path_factory.mktemp("families"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_over_tgi_and_openai_equals_generate(
    server: LiveServer, client: httpx.Client, uploads: Uploads, variant: str
) -> None:
    model = uploads.get(variant)
    expected = model.greedy(12)
    response = client.post(
        f"/models/{model.ref}/generate",
        json={"inputs": PROMPT, "parameters": {"max_new_tokens": 12, "details": True}},
    )
    assert response.status_code == 200, response.text
    tokens = response.json()["details"]["tokens"]
    assert [t["id"] for t in tokens] == expected.ids
    assert [t["logprob"] for t in tokens] == expected.logprobs
    openai = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    completion = openai.completions.create(
        model=model.ref, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=1
    )
    text = model.loaded.tokenizer.decode(expected.ids, skip_special_tokens=True)
    assert completion.choices[0].text == text
    assert completion.choices[0].logprobs is not None
    assert completion.choices[0].logprobs.token_logprobs == expected.logprobs
    assert model.ref + "@1" in [m.id for m in openai.models.list()]


@pytest.mark.parametrize("variant", VARIANTS)
def test_seeded_sampling_alone_equals_batched(
    server: LiveServer, client: httpx.Client, uploads: Uploads, variant: str
) -> None:
    model = uploads.get(variant)
    url = f"/models/{model.ref}/generate"
    body = {"inputs": PROMPT, "parameters": {**SEEDED, "details": True}}
    alone = client.post(url, json=body).json()

    async def together() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=120) as http:
            others = [
                http.post(
                    url,
                    json={
                        "inputs": f"hello {i}",
                        "parameters": {"do_sample": True, "seed": i, "max_new_tokens": 20 + i},
                    },
                )
                for i in range(3)
            ]
            responses = await asyncio.gather(http.post(url, json=body), *others)
        return [r.json() for r in responses]

    exact_steps = server.app.state.generation.engine.stats().exact_steps
    batched = asyncio.run(together())[0]
    assert server.app.state.generation.engine.stats().exact_steps > exact_steps  # batched
    assert batched["details"]["tokens"] == alone["details"]["tokens"]
    assert batched["generated_text"] == alone["generated_text"]


def test_the_stored_dtype_is_served(
    server: LiveServer, client: httpx.Client, uploads: Uploads
) -> None:
    model = uploads.get("qwen2-bfloat16")
    info = client.get(f"/models/{model.ref}/info").json()
    assert info["model_dtype"] == "bfloat16"
    client.post(f"/models/{model.ref}/generate", json={"inputs": PROMPT})
    served = server.app.state.generation.engine.cache.peek(model.checkpoint["id"])
    assert {str(p.dtype) for p in served.model.parameters()} == {"torch.bfloat16"}


def test_a_mixed_checkpoint_keeps_each_tensors_dtype_when_served(
    server: LiveServer, client: httpx.Client, uploads: Uploads
) -> None:
    model = uploads.get("llama-mixed")
    assert client.post(f"/models/{model.ref}/generate", json={"inputs": PROMPT}).status_code == 200
    served = server.app.state.generation.engine.cache.peek(model.checkpoint["id"])
    dtypes = {name: p.dtype for name, p in served.model.named_parameters()}
    expected = {name: p.dtype for name, p in model.loaded.model.named_parameters()}
    assert dtypes == expected
    assert set(dtypes.values()) == {torch.bfloat16, torch.float32}
