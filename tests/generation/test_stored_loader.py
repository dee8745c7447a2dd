"""`stored_checkpoint_loader`: a checkpoint's blobs linked into a folder, read via safetensors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from app.generation import GenerationEngine, GenerationParams, ModelCache, ModelUnavailable
from app.generation.cache import stored_checkpoint_loader
from app.storage.blobs import BlobStore
from tests.generation.conftest import CPU, TinyFolder
from tests.generation.reference import greedy_reference
from tests.records import stored_record


def test_generates_from_a_stored_checkpoint(tiny_folder: TinyFolder, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    store.prepare()
    record = stored_record(tiny_folder.folder, store)
    loader = stored_checkpoint_loader(lambda _id: record, store, tmp_path / "run", CPU)
    cache = ModelCache(loader, budget_bytes=1 << 30)
    engine = GenerationEngine(cache, CPU)
    prompt: list[int] = tiny_folder.tokenizer("hello world")["input_ids"]
    try:
        result = asyncio.run(engine.generate("ckpt-1", prompt, GenerationParams(max_new_tokens=8)))
    finally:
        engine.close()
        cache.close()
    loaded = cache.peek("ckpt-1")
    assert loaded is not None
    assert (tmp_path / "run" / "ckpt-1" / "model.safetensors").is_symlink()
    assert [t.id for t in result.tokens] == greedy_reference(loaded.model, prompt, 8).ids


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architecture": None}, "unknown architecture"),
        ({"architecture": {"model_type": "vit"}}, "'vit' is not supported"),
        ({"tokenizer": {"present": False}}, "has no tokenizer"),
    ],
)
def test_unservable_checkpoints(
    tiny_folder: TinyFolder, tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    store = BlobStore(tmp_path / "data")
    store.prepare()
    record = stored_record(tiny_folder.folder, store, **overrides)
    loader = stored_checkpoint_loader(lambda _id: record, store, tmp_path / "run", CPU)
    with pytest.raises(ModelUnavailable, match=message) as raised:
        loader("ckpt-1")
    assert raised.value.status == 422
