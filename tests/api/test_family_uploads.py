"""Every causal-LM family uploaded over HTTP as a zipped save_pretrained folder: the metadata the
API returns (and the checkpoint page shows) describes the model transformers built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_upload import upload_raw
from tests.families import FAMILIES, VOCAB, build_family, build_family_model
from tests.models import zip_folder

# One tokenizer kind per family, so every kind goes through the server.
TOKENIZERS = {
    "llama": "sentencepiece",
    "mistral": "tokenizer.json",
    "qwen2": "tokenizer.json",
    "qwen3": "tokenizer.json",
    "gemma2": "sentencepiece",
    "phi3": "sentencepiece",
    "gpt_neox": "tokenizer.json",
    "opt": "vocab_merges",
    "gpt2": "vocab_merges",
}
TOKENIZER_KIND = {
    "sentencepiece": "sentencepiece",
    "tokenizer.json": "tokenizers:BPE",
    "vocab_merges": "bpe:vocab+merges",
}


def upload_family(
    client: httpx.Client, tmp_path: Path, family: str, **options: Any
) -> dict[str, Any]:
    folder = build_family(family, tmp_path / family, tokenizer=TOKENIZERS[family], **options)
    response = upload_raw(client, zip_folder(folder, tmp_path / f"{family}.zip"), family)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_upload_records_its_architecture(
    client: httpx.Client, tmp_path: Path, family: str
) -> None:
    body = upload_family(client, tmp_path, family, eos_token_ids=[0, 1])
    model = build_family_model(family, tokenizer=TOKENIZERS[family])
    assert body["status"] == "ready"
    assert body["parameter_count"] == model.num_parameters()
    assert body["parameters_by_dtype"] == {"float32": model.num_parameters()}
    assert body["bytes_per_parameter"] == 4.0
    arch = body["architecture"]
    assert arch["model_type"] == family
    assert arch["architectures"] == [type(model).__name__]
    assert arch["implied_parameter_count"] == model.num_parameters()
    assert (arch["num_layers"], arch["hidden_size"], arch["vocab_size"]) == (2, 64, VOCAB)
    assert (arch["n_layer"], arch["n_embd"], arch["n_head"]) == (2, 64, 4)
    assert arch["tie_word_embeddings"] is FAMILIES[family].tied_by_default
    assert arch["generation"]["eos_token_id"] == [0, 1]
    tokenizer = body["tokenizer"]
    assert tokenizer["kind"] == TOKENIZER_KIND[TOKENIZERS[family]]
    assert tokenizer["chat_template"] is False
    page = client.get(f"/ui/checkpoints/{body['id']}")
    assert page.status_code == 200
    assert type(model).__name__ in page.text


def test_mixed_precision_upload_counts_parameters_per_dtype(
    client: httpx.Client, tmp_path: Path
) -> None:
    body = upload_family(client, tmp_path, "qwen2", dtype="mixed")
    model = build_family_model("qwen2", dtype="mixed")
    by_dtype = body["parameters_by_dtype"]
    vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    assert by_dtype == {"bfloat16": model.num_parameters() - vectors, "float32": vectors}
    expected_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert body["bytes_per_parameter"] == pytest.approx(expected_bytes / model.num_parameters())


def test_family_upload_with_missing_tensor_is_a_422(client: httpx.Client, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = build_family("mistral", tmp_path / "mistral")
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    response = upload_raw(client, zip_folder(folder, tmp_path / "broken.zip"), "broken")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "config_weights_mismatch"
    assert "model.layers.1.mlp.down_proj.weight" in error["message"]
