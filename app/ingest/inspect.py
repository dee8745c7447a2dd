"""Turn a spooled upload into an Inspection: detect the format, unpack, validate, hash.

Runs in a worker thread (or a subprocess for pickles), never on the event loop. Files that will
be stored are written under `workdir`; nothing here touches the database or the blob store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import InvalidInput, RejectedCheckpoint
from app.hashing import sha256_file
from app.ingest.archive_extract import extract_zip
from app.ingest.archive_scan import scan_zip
from app.ingest.generation_config import note_ids_outside_vocabulary, read_generation_config
from app.ingest.jsonutil import loads_strict
from app.ingest.layout_apply import apply_layout
from app.ingest.model_config import (
    architecture_from_config,
    check_config_tensors,
    check_configs_agree,
    check_weights_match,
    config_from_checkpoint,
    infer_gpt2_config,
)
from app.ingest.safetensors_format import (
    DTYPE_TORCH_NAME,
    SafetensorsHeader,
    hash_safetensors_file,
)
from app.ingest.spool import SpooledUpload, looks_like_safetensors, looks_like_zip
from app.ingest.tokenizer_files import describe_tokenizer, no_tokenizer
from app.ingest.torch_pickle import (
    convert_torch_checkpoint,
    legacy_pickle_error,
    looks_like_pickle,
)
from app.ingest.types import CheckpointFormat, FileRecord, IngestLimits, TensorRecord

SHARD_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin",)
MODEL_WEIGHTS = "model.safetensors"


@dataclass
class Inspection:
    """What ingestion learned; `sources` maps each stored file's path to its local bytes."""

    format: CheckpointFormat
    files: list[FileRecord]
    sources: dict[str, Path]
    tensors: list[TensorRecord]
    uncompressed_bytes: int
    config: dict[str, Any] | None = None
    architecture: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    # what a torch.save checkpoint carried under model_args / config / ... (untrusted)
    carried_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=no_tokenizer)
    generation: dict[str, Any] | None = None  # generation_config.json, recorded in architecture


def inspect_upload(
    spooled: SpooledUpload,
    workdir: Path,
    *,
    config: dict[str, Any] | None,
    limits: IngestLimits,
) -> Inspection:
    if looks_like_safetensors(spooled.head):
        inspection = _inspect_safetensors(spooled, limits)
    elif looks_like_zip(spooled.head):
        inspection = _inspect_zip(spooled, workdir, limits)
    elif looks_like_pickle(spooled.head):
        raise legacy_pickle_error(spooled.head)
    else:
        raise RejectedCheckpoint(
            "unrecognised file: expected a zip of a model folder, a .safetensors file or a "
            "torch.save file (zip format)",
            code="unknown_format",
        )
    if not inspection.tensors:
        raise RejectedCheckpoint(
            "the upload holds no tensors: a checkpoint needs at least one weight",
            code="no_weights",
        )
    layout = apply_layout(inspection, config, limits)  # from-scratch GPT state_dicts
    _settle_config(inspection, config if layout is None else layout.config, workdir)
    if layout is not None:
        layout.annotate(inspection.architecture)
    return inspection


def _inspect_safetensors(spooled: SpooledUpload, limits: IngestLimits) -> Inspection:
    if spooled.tensor_hashes is not None:
        header, hashes = spooled.tensor_hashes
    else:
        _, header, hashes = hash_safetensors_file(spooled.path, limits)
    return Inspection(
        format="safetensors",
        files=[FileRecord(MODEL_WEIGHTS, spooled.size, spooled.sha256)],
        sources={MODEL_WEIGHTS: spooled.path},
        tensors=_tensor_records(header, hashes, MODEL_WEIGHTS),
        uncompressed_bytes=spooled.size,
    )


def _inspect_zip(spooled: SpooledUpload, workdir: Path, limits: IngestLimits) -> Inspection:
    plan = scan_zip(spooled.path, limits)
    if plan.kind == "torch":
        return _inspect_torch(spooled, workdir, limits)
    if plan.kind == "torchscript":
        raise RejectedCheckpoint(
            "TorchScript archives are not accepted: upload the state_dict or a safetensors file",
            code="torch_torchscript",
        )
    folder = workdir / "files"
    folder.mkdir()
    extracted = extract_zip(spooled.path, plan, folder, limits)
    files = [FileRecord(e.path, e.size, e.sha256) for e in extracted]
    sources = {e.path: folder / e.path for e in extracted}
    headers = {e.path: e.safetensors for e in extracted if e.safetensors is not None}
    inspection = Inspection(
        format="hf_zip",
        files=files,
        sources=sources,
        tensors=[],
        uncompressed_bytes=sum(e.size for e in extracted),
        tokenizer=describe_tokenizer(folder),
        generation=read_generation_config(folder),
    )
    config_file = folder / "config.json"
    if config_file.is_file():
        inspection.config = _read_config(config_file.read_bytes(), "config.json")
    weight_files = _weight_files(folder, headers)
    if weight_files:
        for name in weight_files:
            header, hashes = headers[name]
            inspection.tensors += _tensor_records(header, hashes, name)
        _check_unique_tensor_names(inspection.tensors)
    else:
        _convert_folder_pickle(inspection, folder, workdir, limits)
    return inspection


def _weight_files(
    folder: Path, headers: dict[str, tuple[SafetensorsHeader, dict[str, str]]]
) -> list[str]:
    """The safetensors files holding the model: one file, or the shards its index names."""
    pickles = [name for name in PICKLE_WEIGHTS if (folder / name).is_file()]
    index_file = folder / SHARD_INDEX
    if index_file.is_file():
        shards = _shards_from_index(index_file, headers)
    elif MODEL_WEIGHTS in headers:
        shards = [MODEL_WEIGHTS]
    else:
        shards = []
    if shards and pickles:
        raise RejectedCheckpoint(
            f"the folder holds both safetensors weights and {pickles[0]}: remove one so it is "
            "clear which weights are the model",
            code="ambiguous_weights",
        )
    if not shards and not pickles:
        raise RejectedCheckpoint(
            "no model weights in the archive: expected model.safetensors, sharded safetensors "
            "with model.safetensors.index.json, or pytorch_model.bin",
            code="no_weights",
        )
    return shards


def _shards_from_index(
    index_file: Path, headers: dict[str, tuple[SafetensorsHeader, dict[str, str]]]
) -> list[str]:
    index = loads_strict(index_file.read_bytes(), what=SHARD_INDEX, code="shard_index_invalid")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise RejectedCheckpoint(f"{SHARD_INDEX} has no weight_map", code="shard_index_invalid")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise RejectedCheckpoint(
            f"{SHARD_INDEX} maps tensors to non-string shard names", code="shard_index_invalid"
        )
    shards = sorted(set(weight_map.values()))
    stray = sorted(name for name in headers if "/" not in name and name not in shards)
    if stray:
        raise RejectedCheckpoint(
            f"{SHARD_INDEX} does not name {stray[:3]}: every safetensors file beside the index "
            "must be one of its shards",
            code="shard_index_invalid",
        )
    for shard in shards:
        if shard not in headers or "/" in shard or shard.startswith("."):
            raise RejectedCheckpoint(
                f"{SHARD_INDEX} names the shard {shard!r}, which is not a safetensors file in "
                "the folder",
                code="shard_index_invalid",
            )
    in_shards = {t.name: path for path in shards for t in headers[path][0].tensors}
    if in_shards != {str(k): str(v) for k, v in weight_map.items()}:
        missing = sorted(set(weight_map) ^ set(in_shards))[:3]
        raise RejectedCheckpoint(
            f"{SHARD_INDEX} disagrees with the shards' contents (e.g. {missing})",
            code="shard_index_invalid",
        )
    return shards


def _convert_folder_pickle(
    inspection: Inspection, folder: Path, workdir: Path, limits: IngestLimits
) -> None:
    converted = workdir / "converted"
    converted.mkdir()
    conversion = convert_torch_checkpoint(folder / PICKLE_WEIGHTS[0], converted, limits)
    _add_derived(inspection, converted, conversion.files, limits)
    inspection.training = conversion.training
    inspection.carried_configs = conversion.configs


def _inspect_torch(spooled: SpooledUpload, workdir: Path, limits: IngestLimits) -> Inspection:
    converted = workdir / "converted"
    converted.mkdir()
    conversion = convert_torch_checkpoint(spooled.path, converted, limits)
    inspection = Inspection(
        format="torch",
        files=[],
        sources={},
        tensors=[],
        uncompressed_bytes=spooled.size,
        training=conversion.training,
        carried_configs=conversion.configs,
    )
    _add_derived(inspection, converted, conversion.files, limits)
    return inspection


def _add_derived(
    inspection: Inspection, folder: Path, written: list[Path], limits: IngestLimits
) -> None:
    """Record files the service wrote (converted weights, training state) and their tensors.

    The converter reports resolved paths: the folder is compared in the same form.
    """
    root = folder.resolve()
    for path in sorted(written):
        name = path.resolve().relative_to(root).as_posix()
        if name.endswith(".safetensors"):
            sha, header, hashes = hash_safetensors_file(path, limits)
            if name == MODEL_WEIGHTS:
                inspection.tensors += _tensor_records(header, hashes, name)
        else:
            sha = sha256_file(path)
        inspection.files.append(FileRecord(name, path.stat().st_size, sha, origin="derived"))
        inspection.sources[name] = path


def _settle_config(inspection: Inspection, given: dict[str, Any] | None, workdir: Path) -> None:
    """Use the given config, else the folder's, else the one the checkpoint carries, else infer
    GPT-2's; record where it came from and write config.json if the upload had none."""
    shapes = {t.name: t.shape for t in inspection.tensors}
    carried = config_from_checkpoint(inspection.carried_configs, shapes)
    if given is not None:
        if inspection.config is not None:
            raise InvalidInput(
                "a config was sent with the upload but the archive has its own config.json: "
                "send one or the other",
                code="config_conflict",
            )
        inspection.config, source = given, "upload"
    elif inspection.config is not None:
        source = "config.json"
    elif carried is not None:
        source, inspection.config = carried
    else:
        inspection.config, source = _inferred_gpt2_config(shapes), "inferred"
    if inspection.config is None:
        return
    inspection.architecture = architecture_from_config(inspection.config, source=source)
    check_weights_match(inspection.architecture, shapes)
    check_config_tensors(inspection.config, shapes)
    _record_generation(inspection, inspection.architecture)
    if carried is not None and carried[0] != source:
        check_configs_agree(inspection.architecture, _carried_architecture(carried), carried[0])
    if "config.json" not in inspection.sources:
        _write_derived_config(inspection, workdir)


def _inferred_gpt2_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any] | None:
    """GPT-2's config inferred from the shapes, only when the tensors are exactly that model's:
    anything else (an edited or partial state_dict) is stored as weights without a model,
    rather than refused for not matching a config nobody declared."""
    config = infer_gpt2_config(shapes)
    if config is None:
        return None
    try:
        check_config_tensors(config, shapes)
    except RejectedCheckpoint:
        return None
    return config


def _record_generation(inspection: Inspection, architecture: dict[str, Any]) -> None:
    if inspection.generation is not None:
        note_ids_outside_vocabulary(inspection.generation, architecture["vocab_size"])
        architecture["generation"] = inspection.generation


def _carried_architecture(carried: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    source, config = carried
    return architecture_from_config(config, source=source)


def _write_derived_config(inspection: Inspection, workdir: Path) -> None:
    path = workdir / "derived-config.json"
    path.write_text(json.dumps(inspection.config, indent=2, sort_keys=True) + "\n")
    record = FileRecord("config.json", path.stat().st_size, sha256_file(path), origin="derived")
    inspection.files.append(record)
    inspection.sources["config.json"] = path


def _read_config(data: bytes, what: str) -> dict[str, Any]:
    config = loads_strict(data, what=what, code="config_invalid")
    if not isinstance(config, dict):
        raise RejectedCheckpoint(f"{what} must hold a JSON object", code="config_invalid")
    return config


def parse_config_text(text: str) -> dict[str, Any]:
    """The `config` form field / query parameter, validated like a config.json."""
    return _read_config(text.encode(), "the config field")


def _tensor_records(
    header: SafetensorsHeader, hashes: dict[str, str], file: str
) -> list[TensorRecord]:
    return [
        TensorRecord(
            name=span.name,
            dtype=DTYPE_TORCH_NAME[span.dtype],
            shape=tuple(span.shape),
            numel=span.numel,
            nbytes=span.end - span.begin,
            sha256=hashes[span.name],
            file=file,
        )
        for span in header.tensors
    ]


def _check_unique_tensor_names(tensors: list[TensorRecord]) -> None:
    seen: dict[str, str] = {}
    for tensor in tensors:
        if tensor.name in seen:
            raise RejectedCheckpoint(
                f"tensor {tensor.name!r} appears in both {seen[tensor.name]} and {tensor.file}",
                code="duplicate_tensor",
            )
        seen[tensor.name] = tensor.file
