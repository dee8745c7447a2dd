"""A tiny GPT-2 saved as a folder, loaded through the engine's own safetensors loader."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from app.generation import GenerationEngine, LoadedModel, ModelCache, load_model_folder
from tests.models import build_gpt2, build_tokenizer, save_model_folder

CPU = torch.device("cpu")


@dataclass
class TinyFolder:
    folder: Path
    tokenizer: Any


@pytest.fixture(scope="package", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny matrices on a 2-core box: a second intra-op thread only adds contention."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="package")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> TinyFolder:
    tokenizer = build_tokenizer()
    model = build_gpt2(len(tokenizer), seed=7)
    folder = save_model_folder(model, tokenizer, tmp_path_factory.mktemp("gen") / "tiny")
    return TinyFolder(folder, tokenizer)


@pytest.fixture(scope="package")
def loaded(tiny_folder: TinyFolder) -> LoadedModel:
    return load_model_folder(tiny_folder.folder, CPU)


@pytest.fixture(scope="module")
def engine(loaded: LoadedModel) -> Iterator[GenerationEngine]:
    """Every step exact, two threads sharing the rows of each exact product (the default on a
    2-core CPU), so every bit-exactness test also covers that."""
    engine = GenerationEngine(
        single_model_cache(loaded),
        CPU,
        max_queue=64,
        max_batch=8,
        exactness="always",
        product_threads=2,
    )
    yield engine
    engine.close()


def single_model_cache(loaded: LoadedModel, budget_bytes: int = 1 << 30) -> ModelCache:
    return ModelCache(lambda _checkpoint_id: loaded, budget_bytes)
