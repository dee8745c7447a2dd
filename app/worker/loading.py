"""Stored checkpoints made loadable: files linked from the blob store, models loaded once.

Loading only ever goes through safetensors (never pickle), with remote code disabled.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from app.services.views import CheckpointView, TensorView
from app.storage.base import BlobStorage
from app.verify.base import LoadedCheckpoint

KNOWN_MODEL_TYPES = {"gpt2"}


def materialize(view: CheckpointView, store: BlobStorage, root: Path) -> Path:
    """A folder whose files are symlinks to the checkpoint's blobs (built once, atomically).

    The blobs are asked for every time: a remote store's cache may have evicted a file since
    the folder was built, and fetching it again puts it back where the link points.
    """
    targets = {file.path: store.local_path(file.sha256) for file in view.files}
    folder = root / view.id
    if folder.is_dir():
        return folder
    staging = root / f".{view.id}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for path, target in targets.items():
        link = staging / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    try:
        staging.rename(folder)
    except OSError:  # another process materialized it first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


class StoredCheckpoint(LoadedCheckpoint):
    def __init__(
        self, view: CheckpointView, folder: Path, tensors: list[TensorView], device: torch.device
    ) -> None:
        self.view = view
        self.folder = folder
        self.tensors = tensors
        self.device = device
        self._state_dict: dict[str, torch.Tensor] | None = None
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def model_unavailable_reason(self) -> str | None:
        architecture = self.view.architecture
        if architecture is None:
            return "unknown architecture (a state_dict without a model config)"
        if architecture.get("model_type") not in KNOWN_MODEL_TYPES:
            return f"model type {architecture.get('model_type')!r} is not supported for loading"
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._state_dict is None:
            tensors: dict[str, torch.Tensor] = {}
            for file in sorted({t.file for t in self.tensors}):
                tensors.update(load_file(self.folder / file, device="cpu"))
            self._state_dict = tensors
        return self._state_dict

    def model(self) -> Any:
        if self._model is None:
            reason = self.model_unavailable_reason
            if reason:
                raise RuntimeError(reason)
            from transformers import AutoModelForCausalLM

            model: Any = AutoModelForCausalLM.from_pretrained(
                self.folder, use_safetensors=True, local_files_only=True, trust_remote_code=False
            )
            model.to(self.device)
            self._model = model.eval()
        return self._model

    def tokenizer(self) -> Any | None:
        if self._tokenizer is None and self.view.tokenizer.get("present"):
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        return self._tokenizer

    def release(self) -> None:
        self._model = self._state_dict = self._tokenizer = None
