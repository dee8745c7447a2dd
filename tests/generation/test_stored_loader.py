"""`stored_checkpoint_loader`: a checkpoint's blobs linked into a folder, read via safetensors."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.generation import GenerationEngine, GenerationParams, ModelCache, ModelUnavailable
from app.generation.cache import stored_checkpoint_loader
from app.services.views import CheckpointView, FileView, TensorView
from app.storage.blobs import BlobStore
from tests.generation.conftest import CPU, TinyFolder
from tests.generation.reference import greedy_reference


def stored_view(folder: Path, store: BlobStore, **overrides: Any) -> CheckpointView:
    files = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        staged = store.tmp_dir / digest
        shutil.copyfile(path, staged)
        store.put(staged, digest)
        files.append(FileView(path=path.name, size=len(data), sha256=digest, origin="member"))
    fields: dict[str, Any] = {
        "id": "ckpt-1",
        "ref": "tiny@1",
        "files": files,
        "architecture": {"model_type": "gpt2"},
        "tokenizer": {"present": True},
    }
    return CheckpointView.model_construct(**(fields | overrides))


def test_generates_from_a_stored_checkpoint(tiny_folder: TinyFolder, tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    store.prepare()
    view = stored_view(tiny_folder.folder, store)
    tensors: list[TensorView] = []
    loader = stored_checkpoint_loader(lambda _id: (view, tensors), store, tmp_path / "run", CPU)
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
        ({"architecture": {"model_type": "llama"}}, "'llama' is not supported"),
        ({"tokenizer": {"present": False}}, "has no tokenizer"),
    ],
)
def test_unservable_checkpoints(
    tiny_folder: TinyFolder, tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    store = BlobStore(tmp_path / "data")
    store.prepare()
    view = stored_view(tiny_folder.folder, store, **overrides)
    loader = stored_checkpoint_loader(lambda _id: (view, []), store, tmp_path / "run", CPU)
    with pytest.raises(ModelUnavailable, match=message) as raised:
        loader("ckpt-1")
    assert raised.value.status == 422
