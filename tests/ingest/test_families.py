"""Ingest of every causal-LM family: real tiny models saved by transformers, inspected in-process
(the same inspect_upload the server runs), with hostile variants of each part of a folder."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.errors import RejectedCheckpoint
from app.ingest.inspect import Inspection, inspect_upload
from app.ingest.model_config import architecture_from_config
from app.ingest.spool import SpooledUpload
from app.ingest.summary import parameter_stats
from app.ingest.types import IngestLimits
from tests.families import FAMILIES, VOCAB, build_family, build_family_model, family_config
from tests.models import zip_folder

DTYPES = ("float32", "bfloat16", "float16", "mixed")
KV_HEADS = {name: spec.fields.get("num_key_value_heads", 4) for name, spec in FAMILIES.items()}
HEAD_DIM = 16  # every family: hidden 64 over 4 heads, or head_dim 16 where set


def inspect_folder(
    folder: Path, tmp_path: Path, config: dict[str, Any] | None = None
) -> Inspection:
    scratch = Path(tempfile.mkdtemp(dir=tmp_path))
    archive = zip_folder(folder, scratch / "upload.zip")
    data = archive.read_bytes()
    spooled = SpooledUpload(archive, len(data), hashlib.sha256(data).hexdigest(), data[:64], None)
    workdir = scratch / "work"
    workdir.mkdir()
    return inspect_upload(spooled, workdir, config=config, limits=IngestLimits())


def rejected(folder: Path, tmp_path: Path, code: str) -> str:
    with pytest.raises(RejectedCheckpoint) as caught:
        inspect_folder(folder, tmp_path)
    assert caught.value.code == code, caught.value
    return str(caught.value)


def unique_parameters_by_dtype(model: Any) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for parameter in model.parameters():  # tied weights once, as save_pretrained stores them
        counts[str(parameter.dtype).removeprefix("torch.")] += parameter.numel()
    return dict(sorted(counts.items()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_and_dtype_is_summarised(family: str, dtype: str, tmp_path: Path) -> None:
    folder = build_family(family, tmp_path / family, dtype=dtype)
    inspection = inspect_folder(folder, tmp_path)
    model = build_family_model(family, dtype=dtype)
    arch = inspection.architecture
    assert arch is not None
    expected = {
        "model_type": family,
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": KV_HEADS[family],
        "head_dim": HEAD_DIM,
        "vocab_size": VOCAB,
        "context_length": 128,
        "tie_word_embeddings": FAMILIES[family].tied_by_default,
        "model_class": type(model).__name__,
        "architectures": [type(model).__name__],
        "implied_parameter_count": model.num_parameters(),
        # GPT-2's names, kept for existing clients
        "n_layer": 2,
        "n_embd": 64,
        "n_head": 4,
        "n_positions": 128,
    }
    assert {key: arch[key] for key in expected} == expected
    assert arch["dtype"] == ("bfloat16" if dtype == "mixed" else dtype)
    stats = parameter_stats(inspection.tensors)
    assert stats["parameter_count"] == model.num_parameters()
    assert stats["parameters_by_dtype"] == unique_parameters_by_dtype(model)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert stats["bytes_per_parameter"] == pytest.approx(nbytes / model.num_parameters())


POSITIONAL = {"gpt2": "learned", "opt": "learned"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_positional_scheme_and_intermediate_size(family: str) -> None:
    config = family_config(family).to_dict()
    arch = architecture_from_config(config, source="upload")
    assert arch["positional"]["kind"] == POSITIONAL.get(family, "rope")
    if arch["positional"]["kind"] == "rope":
        assert arch["positional"]["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert arch["intermediate_size"] == (256 if family == "gpt2" else 128)


@pytest.mark.parametrize(
    ("kind", "special", "expected_kind"),
    [
        ("tokenizer.json", {"eos": "<|endoftext|>"}, "tokenizers:BPE"),
        ("vocab_merges", {"bos": "<|endoftext|>", "eos": "<|endoftext|>"}, "bpe:vocab+merges"),
        ("sentencepiece", {"bos": "<s>", "eos": "</s>", "unk": "<unk>"}, "sentencepiece"),
    ],
)
@pytest.mark.parametrize("chat_template", [None, "{{ messages[0]['content'] }}"])
def test_tokenizer_kinds_are_recorded(
    kind: str,
    special: dict[str, str],
    expected_kind: str,
    chat_template: str | None,
    tmp_path: Path,
) -> None:
    folder = build_family("llama", tmp_path / "llama", tokenizer=kind, chat_template=chat_template)
    tokenizer = inspect_folder(folder, tmp_path).tokenizer
    assert tokenizer["present"] is True
    assert tokenizer["kind"] == expected_kind
    assert tokenizer["vocab_size"] == independent_vocab_size(folder, kind)
    for role, token in special.items():
        assert tokenizer["special_tokens"][role] == token, role
    assert tokenizer["special_tokens"]["pad"] is None
    assert tokenizer["chat_template"] is (chat_template is not None)


def independent_vocab_size(folder: Path, kind: str) -> int:
    if kind != "sentencepiece":
        return VOCAB
    import sentencepiece

    size: int = sentencepiece.SentencePieceProcessor(
        model_file=str(folder / "tokenizer.model")
    ).get_piece_size()
    return size


@pytest.mark.parametrize(
    "corruption",
    [b"not a protobuf at all \xff\xfe", b"\x0a\x05", b""],
    ids=["garbage", "truncated", "empty"],
)
def test_corrupt_sentencepiece_model_is_refused(corruption: bytes, tmp_path: Path) -> None:
    folder = build_family("llama", tmp_path / "llama", tokenizer="sentencepiece")
    (folder / "tokenizer.model").write_bytes(corruption)
    assert "tokenizer.model" in rejected(folder, tmp_path, "tokenizer_invalid")


def test_corrupt_sentencepiece_beside_tokenizer_json_is_refused(tmp_path: Path) -> None:
    folder = build_family("llama", tmp_path / "llama")
    (folder / "tokenizer.model").write_bytes(b"\x0a\x05")
    rejected(folder, tmp_path, "tokenizer_invalid")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_sharded_checkpoint_is_read_from_every_shard(family: str, tmp_path: Path) -> None:
    folder = build_family(family, tmp_path / family, max_shard_size="100KB")
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    inspection = inspect_folder(folder, tmp_path)
    assert {t.file for t in inspection.tensors} == set(shards)
    model = build_family_model(family)
    assert parameter_stats(inspection.tensors)["parameter_count"] == model.num_parameters()


def sharded(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    folder = build_family("llama", tmp_path / "llama", max_shard_size="100KB")
    return folder, json.loads((folder / "model.safetensors.index.json").read_text())


def test_stray_shard_beside_the_index_is_refused(tmp_path: Path) -> None:
    folder, _ = sharded(tmp_path)
    save_file({"extra": torch.zeros(2)}, folder / "model-extra.safetensors")
    assert "model-extra.safetensors" in rejected(folder, tmp_path, "shard_index_invalid")


@pytest.mark.parametrize("change", ["wrong shard", "unlisted tensor", "not a string"])
def test_index_disagreeing_with_its_shards_is_refused(change: str, tmp_path: Path) -> None:
    folder, index = sharded(tmp_path)
    weight_map = index["weight_map"]
    name = next(iter(weight_map))
    shards = sorted(set(weight_map.values()))
    if change == "wrong shard":
        weight_map[name] = next(s for s in shards if s != weight_map[name])
    elif change == "unlisted tensor":
        del weight_map[name]
    else:
        weight_map[name] = 3
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    rejected(folder, tmp_path, "shard_index_invalid")


@pytest.mark.parametrize("eos", [[2, 5], [7]])
def test_generation_config_keeps_a_list_of_eos_ids(eos: list[int], tmp_path: Path) -> None:
    folder = build_family("qwen2", tmp_path / "qwen2", eos_token_ids=eos)
    arch = inspect_folder(folder, tmp_path).architecture
    assert arch is not None
    assert arch["generation"]["eos_token_id"] == eos
    assert arch["generation"]["bos_token_id"] == 0


def test_generation_config_single_eos_and_defaults(tmp_path: Path) -> None:
    folder = build_family("llama", tmp_path / "llama", tokenizer="sentencepiece")
    path = folder / "generation_config.json"
    document = json.loads(path.read_text())
    document.update(do_sample=True, temperature=0.7, top_p=0.9, max_new_tokens=32)
    path.write_text(json.dumps(document))
    generation = inspect_folder(folder, tmp_path).architecture["generation"]  # type: ignore[index]
    assert generation["eos_token_id"] == 2
    assert generation["bos_token_id"] == 1
    assert generation["defaults"] == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_new_tokens": 32,
    }


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"eos_token_id": "2"}, "eos_token_id"),
        ({"eos_token_id": [2, 1 << 40]}, "eos_token_id"),
        ({"eos_token_id": []}, "eos_token_id"),
        ({"eos_token_id": True}, "eos_token_id"),
        ({"bos_token_id": -1}, "bos_token_id"),
        ({"pad_token_id": 2.0}, "pad_token_id"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"do_sample": "yes"}, "do_sample"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_hostile_generation_config_is_refused(
    fields: dict[str, Any], named: str, tmp_path: Path
) -> None:
    folder = build_family("llama", tmp_path / "llama")
    path = folder / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    assert named in rejected(folder, tmp_path, "generation_config_invalid")


def test_ids_outside_the_vocabulary_are_recorded_not_refused(tmp_path: Path) -> None:
    """GPT2Config's default eos 50256 comes with every small-vocabulary GPT-2."""
    folder = build_family("gpt2", tmp_path / "gpt2", eos_token_ids=[0, 50256])
    arch = inspect_folder(folder, tmp_path).architecture
    assert arch is not None
    assert arch["generation"]["eos_token_id"] == [0, 50256]
    assert arch["generation"]["ids_outside_vocabulary"] == [50256]


def test_generation_config_not_an_object_is_refused(tmp_path: Path) -> None:
    folder = build_family("llama", tmp_path / "llama")
    (folder / "generation_config.json").write_text("[2]")
    rejected(folder, tmp_path, "generation_config_invalid")


def rewrite_weights(folder: Path, change: Any) -> None:
    path = folder / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("family", list(FAMILIES))
def test_missing_tensor_is_named(family: str, tmp_path: Path) -> None:
    folder = build_family(family, tmp_path / family)
    victim = sorted(load_file(folder / "model.safetensors"))[-1]
    rewrite_weights(folder, lambda tensors: tensors.pop(victim))
    message = rejected(folder, tmp_path, "config_weights_mismatch")
    assert f"missing [{victim}]" in message


@pytest.mark.parametrize("family", list(FAMILIES))
def test_unexpected_tensor_is_named(family: str, tmp_path: Path) -> None:
    folder = build_family(family, tmp_path / family)
    rewrite_weights(folder, lambda tensors: tensors.update(stray=torch.zeros(3)))
    message = rejected(folder, tmp_path, "config_weights_mismatch")
    assert "unexpected [stray]" in message


@pytest.mark.parametrize("family", list(FAMILIES))
def test_misshaped_tensors_and_parameter_counts_are_named(family: str, tmp_path: Path) -> None:
    """Weights of a wider MLP than the config says: every MLP matrix is named, and the counts
    of the config's model and of the weights both appear."""
    wider = "n_inner" if family == "gpt2" else "ffn_dim" if family == "opt" else "intermediate_size"
    folder = build_family(family, tmp_path / family, **{wider: 192})
    config = json.loads((folder / "config.json").read_text())
    config[wider] = 128 if family != "gpt2" else 256
    (folder / "config.json").write_text(json.dumps(config))
    stored = sum(t.numel() for t in load_file(folder / "model.safetensors").values())
    message = rejected(folder, tmp_path, "config_weights_mismatch")
    implied = build_family_model(family, **{wider: config[wider]}).num_parameters()
    assert "mis-shaped [" in message
    assert f"has {implied} parameters, the weights hold {stored}" in message
    assert implied != stored


def test_long_lists_of_names_are_capped(tmp_path: Path) -> None:
    folder = build_family("llama", tmp_path / "llama", num_hidden_layers=4)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    message = rejected(folder, tmp_path, "config_weights_mismatch")
    assert "more]" in message
    assert len(message) < 1000


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_tied_output_weights_may_be_stored_or_not(family: str, tmp_path: Path) -> None:
    folder = build_family(family, tmp_path / family, tie_word_embeddings=True)
    model = build_family_model(family, tie_word_embeddings=True)
    assert "lm_head.weight" not in load_file(folder / "model.safetensors")
    without = inspect_folder(folder, tmp_path)
    output = model.get_output_embeddings().weight.detach().clone()
    rewrite_weights(folder, lambda tensors: tensors.update({"lm_head.weight": output}))
    with_head = inspect_folder(folder, tmp_path)
    assert {t.name for t in with_head.tensors} - {t.name for t in without.tensors} == {
        "lm_head.weight"
    }


def test_untied_model_without_its_output_layer_is_refused(tmp_path: Path) -> None:
    folder = build_family("llama", tmp_path / "llama")
    rewrite_weights(folder, lambda tensors: tensors.pop("lm_head.weight"))
    assert "missing [lm_head.weight]" in rejected(folder, tmp_path, "config_weights_mismatch")


def test_gpt2_saved_without_its_base_prefix_is_accepted(tmp_path: Path) -> None:
    """The original GPT-2 checkpoints name tensors `h.0...`, not `transformer.h.0...`."""
    folder = build_family("gpt2", tmp_path / "gpt2")
    rewrite_weights(
        folder,
        lambda tensors: tensors.update(
            {name.removeprefix("transformer."): tensors.pop(name) for name in list(tensors)}
        ),
    )
    assert inspect_folder(folder, tmp_path).architecture["model_type"] == "gpt2"  # type: ignore[index]


def test_non_causal_config_stays_weights_only(tmp_path: Path) -> None:
    """A BERT config with arbitrary weights: recorded, not validated as a language model."""
    folder = tmp_path / "bert"
    folder.mkdir()
    save_file({"w": torch.zeros(4, 4)}, folder / "model.safetensors")
    config = {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 30}
    (folder / "config.json").write_text(json.dumps(config))
    arch = inspect_folder(folder, tmp_path).architecture
    assert arch is not None
    assert (arch["model_type"], arch["num_layers"], arch["hidden_size"]) == ("bert", 2, 64)
    assert "model_class" not in arch


ABSURD = {
    "layers": {"num_hidden_layers": 10**5},
    "hidden": {"hidden_size": 10**6},
    "heads": {"num_attention_heads": 4096},
    "kv heads": {"num_key_value_heads": 4096},
    "intermediate": {"intermediate_size": 10**8},
    "vocab": {"vocab_size": 10**8},
    "positions": {"max_position_embeddings": 10**9},
    "huge integer": {"rope_scaling": {"factor": 10**30}},
    "implied parameters": {"hidden_size": 65_536, "num_hidden_layers": 1024},
    "experts": {"num_local_experts": 512, "num_hidden_layers": 1024},
    "string size": {"intermediate_size": "128"},
}


@pytest.mark.parametrize("fields", ABSURD.values(), ids=list(ABSURD))
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "phi3", "gpt_neox"])
def test_absurd_sizes_are_refused_before_anything_is_built(
    family: str, fields: dict[str, Any]
) -> None:
    config = {**family_config(family).to_dict(), **fields}
    with pytest.raises(RejectedCheckpoint) as caught:
        architecture_from_config(config, source="upload")
    assert caught.value.code == "config_invalid"


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_absurd_sizes_under_gpt2_and_opt_names(family: str) -> None:
    names = {"gpt2": ("n_embd", "n_layer"), "opt": ("hidden_size", "num_hidden_layers")}[family]
    config = {**family_config(family).to_dict(), names[0]: 65_536, names[1]: 1024}
    with pytest.raises(RejectedCheckpoint, match="parameters") as caught:
        architecture_from_config(config, source="upload")
    assert caught.value.code == "config_invalid"


def test_config_transformers_cannot_build_is_a_clean_422() -> None:
    config = {**family_config("llama").to_dict(), "hidden_act": "no_such_activation"}
    with pytest.raises(RejectedCheckpoint, match="cannot build a llama model") as caught:
        architecture_from_config(config, source="upload")
    assert caught.value.code == "config_invalid"


def inspect_file(path: Path, tmp_path: Path, config: dict[str, Any]) -> Inspection:
    data = path.read_bytes()
    spooled = SpooledUpload(path, len(data), hashlib.sha256(data).hexdigest(), data[:64], None)
    workdir = Path(tempfile.mkdtemp(dir=tmp_path))
    return inspect_upload(spooled, workdir, config=config, limits=IngestLimits())


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt_neox", "opt"])
@pytest.mark.parametrize("upload", ["safetensors", "torch"])
def test_bare_weights_with_a_family_config(family: str, upload: str, tmp_path: Path) -> None:
    model = build_family_model(family)
    config = model.config.to_dict()
    if upload == "torch":
        path = tmp_path / "model.pt"
        torch.save(model.state_dict(), path)  # tied weights appear under both names
    else:
        path = build_family(family, tmp_path / family) / "model.safetensors"
    arch = inspect_file(path, tmp_path, config).architecture
    assert arch is not None
    assert (arch["config_source"], arch["model_class"]) == ("upload", type(model).__name__)


@pytest.mark.parametrize("upload", ["safetensors", "torch"])
def test_bare_weights_of_another_shape_than_the_config(upload: str, tmp_path: Path) -> None:
    model = build_family_model("qwen3", num_hidden_layers=3)
    config = build_family_model("qwen3").config.to_dict()
    path = tmp_path / "model.pt"
    if upload == "torch":
        torch.save(model.state_dict(), path)
    else:
        path = path.with_suffix(".safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    with pytest.raises(RejectedCheckpoint, match=r"unexpected \[model\.layers\.2\.") as caught:
        inspect_file(path, tmp_path, config)
    assert caught.value.code == "config_weights_mismatch"


def test_gpt2_legacy_attention_masks_are_tolerated(tmp_path: Path) -> None:
    """Older GPT-2 checkpoints store each block's causal mask as `h.N.attn.bias`; the loader
    ignores them, and so does validation (their count is reported as stored)."""
    folder = build_family("gpt2", tmp_path / "gpt2")
    mask = torch.tril(torch.ones(128, 128)).view(1, 1, 128, 128)
    rewrite_weights(
        folder,
        lambda tensors: tensors.update({f"h.{i}.attn.bias": mask.clone() for i in range(2)}),
    )
    inspection = inspect_folder(folder, tmp_path)
    assert {"h.0.attn.bias", "h.1.attn.bias"} <= {t.name for t in inspection.tensors}


def test_building_a_half_precision_config_leaves_torchs_default_dtype_alone() -> None:
    """Ingest runs beside generation threads: torch's process-wide default dtype must not
    flip to the config's bfloat16 while the meta-device model is built."""
    from unittest import mock

    config = {**family_config("llama", num_hidden_layers=3).to_dict(), "dtype": "bfloat16"}
    with mock.patch("torch.set_default_dtype", side_effect=AssertionError("default dtype set")):
        arch = architecture_from_config(config, source="upload")
    assert (arch["dtype"], arch["num_layers"]) == ("bfloat16", 3)
