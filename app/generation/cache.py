"""Loaded models kept in memory within a byte budget, loaded once however many ask at once.

Loading runs on the cache's own threads (never on the event loop) and only ever reads
safetensors. The loader is injected: tests load a tiny folder, the service materializes a stored
checkpoint (see `stored_checkpoint_loader`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.errors import AppError
from app.generation.errors import GenerationFailed, ModelUnavailable
from app.records import CheckpointRecord
from app.runtime.casting import cast_parameters
from app.runtime.folders import DEFAULT_MAX_ENTRIES
from app.runtime.loading import StoredCheckpoint, materialize, require_readable_files
from app.storage.base import BlobStorage


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for inference (eval mode, on its device) with its tokenizer and config."""

    model: Any
    tokenizer: Any
    config: Any
    nbytes: int

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> LoadedModel:
        return cls(
            model=model, tokenizer=tokenizer, config=model.config, nbytes=parameter_bytes(model)
        )

    @property
    def context_length(self) -> int:
        return int(
            getattr(self.config, "n_positions", None)
            or getattr(self.config, "max_position_embeddings", None)
            or 1024
        )


Loader = Callable[[str], LoadedModel]


def parameter_bytes(model: Any) -> int:
    """Bytes of the parameters; `parameters()` yields tied weights (lm_head = wte) once."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def load_model_folder(folder: Path, device: torch.device) -> LoadedModel:
    """A saved Hugging Face folder, read through safetensors only, without remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    require_readable_files(folder)
    model: Any = AutoModelForCausalLM.from_pretrained(
        folder, use_safetensors=True, local_files_only=True, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return LoadedModel.of(model.to(device).eval(), tokenizer)


def stored_checkpoint_loader(
    describe: Callable[[str], CheckpointRecord],
    store: BlobStorage,
    cache_dir: Path,
    device: torch.device,
    *,
    max_folders: int = DEFAULT_MAX_ENTRIES,
    serving_dtype: str = "stored",
) -> Loader:
    """A loader for stored checkpoints: `describe(id)` gives its record (raising
    NotFound for an unknown id); the files are linked from the blob store into `cache_dir`, and
    they and their blobs stay pinned there until the model and tokenizer are in memory.
    `serving_dtype` other than "stored": every floating parameter is cast to it."""

    def load(checkpoint_id: str) -> LoadedModel:
        view = describe(checkpoint_id)
        with materialize(view, store, cache_dir, max_folders=max_folders) as folder:
            checkpoint = StoredCheckpoint(view, folder.path, device)
            reason = checkpoint.model_unavailable_reason
            if reason is not None:
                raise ModelUnavailable(f"checkpoint {view.ref} cannot generate text: {reason}")
            tokenizer = checkpoint.tokenizer()
            if tokenizer is None:
                raise ModelUnavailable(
                    f"checkpoint {view.ref} has no tokenizer to generate text with"
                )
            return LoadedModel.of(cast_parameters(checkpoint.model(), serving_dtype), tokenizer)

    return load


class ModelCache:
    """Models by checkpoint id, least recently used evicted beyond `budget_bytes`.

    A model larger than the whole budget is still served: it evicts everything else and stays
    until the next model arrives. Evicting only drops the cache's reference, so requests already
    generating with a model keep it alive until they finish.
    """

    def __init__(self, loader: Loader, budget_bytes: int, *, load_threads: int = 1) -> None:
        self.loader = loader
        self.budget_bytes = budget_bytes
        self.loads: Counter[str] = Counter()  # loads started, per id (tests assert single-flight)
        self.hits = 0  # get() found the model resident (metrics)
        self.misses = 0  # get() had to load it or wait for a load in flight
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._inflight: dict[str, Future[LoadedModel]] = {}
        self._discarded_in_flight: set[str] = set()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(load_threads, thread_name_prefix="model-load")

    async def get(self, checkpoint_id: str) -> LoadedModel:
        """The loaded model, loading it (once, off the event loop) when it is not resident."""
        with self._lock:
            loaded = self._models.get(checkpoint_id)
            if loaded is not None:
                self.hits += 1
                self._models.move_to_end(checkpoint_id)
                return loaded
            self.misses += 1
            future = self._inflight.get(checkpoint_id)
            if future is None:
                future = self._executor.submit(self._load, checkpoint_id)
                self._inflight[checkpoint_id] = future
                self.loads[checkpoint_id] += 1
        # Shielded: a waiter that is cancelled (client gone) must not cancel the shared load.
        return await asyncio.shield(asyncio.wrap_future(future))

    def peek(self, checkpoint_id: str) -> LoadedModel | None:
        """The resident model, without loading it or touching the LRU order."""
        with self._lock:
            return self._models.get(checkpoint_id)

    def discard(self, checkpoint_id: str) -> bool:
        """Forget a model (its checkpoint was deleted); True when it was resident.

        A load in flight still answers the requests waiting on it, but its model is not kept.
        """
        with self._lock:
            if checkpoint_id in self._inflight:
                self._discarded_in_flight.add(checkpoint_id)
            return self._models.pop(checkpoint_id, None) is not None

    def resident(self) -> list[str]:
        """Resident ids, least recently used first."""
        with self._lock:
            return list(self._models)

    @property
    def resident_bytes(self) -> int:
        with self._lock:
            return sum(m.nbytes for m in self._models.values())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _load(self, checkpoint_id: str) -> LoadedModel:
        try:
            loaded = self.loader(checkpoint_id)
        except BaseException as exc:
            with self._lock:
                self._inflight.pop(checkpoint_id, None)  # the next request tries again
                self._discarded_in_flight.discard(checkpoint_id)
            if isinstance(exc, Exception) and not isinstance(exc, AppError):
                # A broken file or an out-of-memory is the dependency failing, not a bug here.
                raise GenerationFailed(f"loading checkpoint {checkpoint_id} failed: {exc}") from exc
            raise
        with self._lock:
            self._inflight.pop(checkpoint_id, None)
            if checkpoint_id in self._discarded_in_flight:
                self._discarded_in_flight.discard(checkpoint_id)
                return loaded
            self._models[checkpoint_id] = loaded
            self._evict_over_budget(keep=checkpoint_id)
        return loaded

    def _evict_over_budget(self, keep: str) -> None:
        total = sum(m.nbytes for m in self._models.values())
        for candidate in list(self._models):
            if total <= self.budget_bytes:
                break
            if candidate != keep:
                total -= self._models.pop(candidate).nbytes
