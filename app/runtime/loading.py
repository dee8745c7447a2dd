"""Stored checkpoints made loadable: files linked from the blob store, models loaded once.

Loading only ever goes through safetensors (never pickle), with remote code disabled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from app.errors import AppError, NotFound
from app.ingest.types import FileRecord, TensorRecord
from app.records import CheckpointRecord
from app.runtime.folders import (
    DEFAULT_MAX_ENTRIES,
    evict_least_recently_used,
    hold_folder,
    release_unbuilt,
)
from app.storage.base import BlobStorage
from app.storage.cache import BlobPins
from app.storage.pins import Pin
from app.verify.base import LoadedCheckpoint
from app.verify.stored_names import stored_parameters

# Narrowest first: the last one a checkpoint stores is its widest.
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def causal_lm_model_types() -> frozenset[str]:
    """Every model_type transformers itself implements for causal language modelling."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


class CheckpointFileMissing(AppError):
    """A file the checkpoint recorded cannot be read from the blob store (deleted, unreadable,
    truncated): the dependency the model needs failed, so generation answers 424."""

    status = 424
    code = "checkpoint_file_missing"


class MaterializedFolder:
    """A checkpoint's folder held in use, in every process sharing the data dir, until
    `release()`: the folder itself and the blobs its links point to (when a cache holds them)."""

    def __init__(self, path: Path, folder_pin: Pin, blob_pins: BlobPins) -> None:
        self.path = path
        self._folder_pin = folder_pin
        self._blob_pins = blob_pins

    def release(self) -> None:
        self._blob_pins.release()
        self._folder_pin.release()

    def __enter__(self) -> MaterializedFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def materialize(
    view: CheckpointRecord,
    store: BlobStorage,
    root: Path,
    *,
    max_folders: int = DEFAULT_MAX_ENTRIES,
) -> MaterializedFolder:
    """A folder whose files are symlinks to the checkpoint's blobs, checked on every use, held
    in use until released; beyond `max_folders` the least recently used ones not in use go.

    An entry that does not hold exactly the recorded files, each a link to the blob with its
    recorded sha256, is rebuilt atomically, whatever broke it (relative links, a blob cache file
    evicted or deleted, a file removed by hand). Checking compares link targets; nothing is
    re-hashed. The blobs are asked for every time: a remote store's cache may have evicted a
    file since the folder was built, and fetching it again puts it back where the link points.
    """
    folder_pin = hold_folder(root, view.id)
    blob_pins = BlobPins(f"checkpoint {view.ref}", _distinct_bytes(view))
    try:
        with blob_pins.collecting():
            targets = {file.path: _blob_path(view, file, store) for file in view.files}
        folder = root / view.id
        if not _holds(folder, targets):
            _rebuild(folder, targets)
    except BaseException:
        blob_pins.release()
        release_unbuilt(root, view.id, folder_pin)
        raise
    evict_least_recently_used(root, max_folders)
    return MaterializedFolder(folder, folder_pin, blob_pins)


def _distinct_bytes(view: CheckpointRecord) -> int:
    return sum({file.sha256: file.size for file in view.files}.values())


def _blob_path(view: CheckpointRecord, file: FileRecord, store: BlobStorage) -> Path:
    """The readable local blob holding `file`, or CheckpointFileMissing naming the file."""
    try:
        path = store.local_path(file.sha256).resolve()
        with path.open("rb"):
            size = path.stat().st_size
    except (NotFound, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise _missing(view, file, f"cannot be read ({reason})") from exc
    if size != file.size:
        raise _missing(view, file, f"is {size} bytes in the blob store, {file.size} recorded")
    return path


def _missing(view: CheckpointRecord, file: FileRecord, problem: str) -> CheckpointFileMissing:
    return CheckpointFileMissing(
        f"checkpoint {view.ref}: file {file.path} (blob {file.sha256[:12]}) {problem}"
    )


def _holds(folder: Path, targets: dict[str, Path]) -> bool:
    """Exactly the recorded files, each a link to its blob (absolute, as `targets` are)."""
    if not folder.is_dir():
        return False
    present = {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_symlink() or not path.is_dir()
    }
    return present == set(targets) and all(
        (folder / name).is_symlink() and Path(os.readlink(folder / name)) == target
        for name, target in targets.items()
    )


def _rebuild(folder: Path, targets: dict[str, Path]) -> None:
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name, target in targets.items():
        link = staging / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    if folder.is_dir():  # a broken entry: moved aside, so readers never see a half-built one
        stale = staging.with_name(f"{staging.name}.stale")
        shutil.rmtree(stale, ignore_errors=True)  # left by a crash in this very spot
        with contextlib.suppress(FileNotFoundError):  # another process moved it first
            folder.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:  # another process put its entry (the same links) in place first
        shutil.rmtree(staging, ignore_errors=True)


def unreadable_files(folder: Path) -> list[str]:
    """Files in `folder` that cannot be opened (dangling links, no permission), by name."""
    unreadable = []
    for path in sorted(folder.rglob("*")):
        try:
            if path.is_file():
                path.open("rb").close()
            elif path.is_symlink():
                unreadable.append(path.relative_to(folder).as_posix())
        except OSError:
            unreadable.append(path.relative_to(folder).as_posix())
    return unreadable


def require_readable_files(folder: Path) -> None:
    """Before transformers reads a folder: its guess for a missing file ("install sentencepiece
    or tiktoken" for a tokenizer.json that is gone) would hide which file it was."""
    unreadable = unreadable_files(folder)
    if unreadable:
        raise CheckpointFileMissing(f"{folder}: cannot read {', '.join(unreadable)}")


class StoredCheckpoint(LoadedCheckpoint):
    def __init__(self, view: CheckpointRecord, folder: Path, device: torch.device) -> None:
        self.view = view
        self.folder = folder
        self.tensors: tuple[TensorRecord, ...] = view.tensors
        self.device = device
        self._state_dict: dict[str, torch.Tensor] | None = None
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def model_unavailable_reason(self) -> str | None:
        architecture = self.view.architecture
        if architecture is None:
            return "unknown architecture (a state_dict without a model config)"
        if architecture.get("model_type") not in causal_lm_model_types():
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

            require_readable_files(self.folder)
            model: Any = AutoModelForCausalLM.from_pretrained(
                self.folder,
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=False,
                dtype=_load_dtype(self.tensors),
            )
            _restore_stored_dtypes(model, self.tensors)
            model.to(self.device)
            self._model = model.eval()
        return self._model

    def tokenizer(self) -> Any | None:
        if self._tokenizer is None and self.view.tokenizer.get("present"):
            from transformers import AutoTokenizer

            require_readable_files(self.folder)
            self._tokenizer = AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
        return self._tokenizer


def _stored_float_dtypes(tensors: tuple[TensorRecord, ...]) -> list[str]:
    stored = {tensor.dtype for tensor in tensors}
    return [dtype for dtype in _FLOAT_DTYPES if dtype in stored]


def _load_dtype(tensors: tuple[TensorRecord, ...]) -> torch.dtype:
    """The stored dtype; for a mixed file the widest one, so that loading only ever widens.

    Never "auto": that trusts config.json's `dtype`, which may say float32 over bfloat16
    tensors (widened: the reloaded tensors no longer hash as stored) or the reverse (rounded).
    """
    dtypes = _stored_float_dtypes(tensors) or ["float32"]
    dtype: torch.dtype = getattr(torch, dtypes[-1])
    return dtype


def _restore_stored_dtypes(model: torch.nn.Module, tensors: tuple[TensorRecord, ...]) -> None:
    """Give each parameter of a mixed checkpoint back its stored dtype; the load only widened
    them, so narrowing again is exact (bit for bit)."""
    if len(_stored_float_dtypes(tensors)) < 2:
        return
    stored = {tensor.name: getattr(torch, tensor.dtype) for tensor in tensors}
    for name, parameter in stored_parameters(model).items():
        dtype = stored.get(name)
        if dtype is not None and parameter.is_floating_point() and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)
