"""torch.save -> safetensors conversion: layouts, training summaries and hostile pickles.

Every input is built here at test time. Spawning the loader child costs a torch import (~2-3 s),
so only the cases that must prove process isolation go through `convert_torch_checkpoint`; the
classification / summary logic is also driven in-process through `torch_child.run`, which is the
exact code the child runs.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import resource
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch._weights_only_unpickler import _get_allowed_globals
from transformers import GPT2Config, GPT2LMHeadModel

from app.errors import RejectedCheckpoint
from app.ingest import torch_child, torch_pickle, torch_training
from app.ingest.torch_pickle import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    TRAINING_FILE,
    TorchConversion,
    convert_torch_checkpoint,
)
from app.ingest.torch_rejection import Rejection
from app.ingest.types import IngestLimits
from tests.hostile.builders import (
    Reduce,
    getattr_builtins_pickle,
    hostile_payloads,
    memo_bomb,
    rewrite_zip,
    with_data_pkl,
)

LIMITS = IngestLimits()


# --- helpers ---------------------------------------------------------------------------------


def tiny_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    return GPT2LMHeadModel(config)


def one_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    if isinstance(model, GPT2LMHeadModel):
        ids = torch.tensor([[1, 2, 3, 4]])
        model(ids, labels=ids).loss.backward()
    else:
        model(torch.randn(5, 4)).square().sum().backward()
    optimizer.step()


def save(obj: Any, path: Path) -> Path:
    torch.save(obj, path)
    return path


def tensor_digests(path: Path) -> dict[str, tuple[str, tuple[int, ...], str]]:
    with safe_open(str(path), "pt") as handle:
        return {
            name: (
                str(handle.get_tensor(name).dtype),
                tuple(handle.get_tensor(name).shape),
                hashlib.sha256(handle.get_tensor(name).numpy().tobytes()).hexdigest(),
            )
            for name in handle.keys()  # noqa: SIM118 - safe_open has no __iter__
        }


def rejection(src: Path, out_dir: Path, limits: IngestLimits = LIMITS) -> RejectedCheckpoint:
    with pytest.raises(RejectedCheckpoint) as caught:
        convert_torch_checkpoint(src, out_dir, limits)
    assert caught.value.status == 422
    assert not any((out_dir / name).exists() for name in torch_pickle.OUTPUT_FILES)
    return caught.value


def convert_in_process(src: Path, out_dir: Path) -> dict[str, Any]:
    """Run the child's code path in this process (no subprocess, no rlimits)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    options = torch_pickle.child_options_for(src.stat().st_size, LIMITS)
    return torch_child.run(src, out_dir, options)


def rejection_in_process(src: Path, out_dir: Path) -> Rejection:
    with pytest.raises(Rejection) as caught:
        convert_in_process(src, out_dir)
    return caught.value


# --- valid checkpoints -----------------------------------------------------------------------


def test_mlp_state_dict_converts_to_safetensors(tmp_path: Path) -> None:
    model = tiny_mlp()
    out = tmp_path / "out"
    result = convert_in_process(save(model.state_dict(), tmp_path / "mlp.pth"), out)
    expected = {"ok": True, "kind": "state_dict", "files": [MODEL_FILE], "tied": {}, "configs": {}}
    assert result == expected
    written = load_file(out / MODEL_FILE)
    assert set(written) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert torch.equal(written[name], tensor)
    with safe_open(str(out / MODEL_FILE), "pt") as handle:
        assert handle.metadata() == {"format": "pt"}


def test_gpt2_state_dict_matches_save_pretrained(tmp_path: Path) -> None:
    model = tiny_gpt2()
    src = save(model.state_dict(), tmp_path / "gpt2.bin")
    model.save_pretrained(tmp_path / "pretrained")
    out = tmp_path / "out"
    result = convert_torch_checkpoint(src, out, LIMITS)
    assert result == TorchConversion(
        kind="state_dict",
        files=[out.resolve() / MODEL_FILE],
        tied={"lm_head.weight": "transformer.wte.weight"},
        training=None,
    )
    expected = tensor_digests(tmp_path / "pretrained" / "model.safetensors")
    assert tensor_digests(result.files[0]) == expected
    assert len(expected) == len(model.state_dict()) - 1


def test_gpt2_training_checkpoint_with_adamw(tmp_path: Path) -> None:
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    one_step(model, optimizer)
    checkpoint = {
        "epoch": 3,
        "step": 1200,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": torch.tensor(2.5),
        "val_loss": 2.75,
        "lr": 3e-4,
        "best_val_loss": 2.5,
        "scheduler": {"last_epoch": 3},
    }
    out = tmp_path / "out"
    result = convert_torch_checkpoint(save(checkpoint, tmp_path / "ckpt.pt"), out, LIMITS)
    resolved = out.resolve()
    assert result.kind == "training"
    assert result.files == [
        resolved / MODEL_FILE,
        resolved / OPTIMIZER_FILE,
        resolved / TRAINING_FILE,
    ]
    assert result.tied == {"lm_head.weight": "transformer.wte.weight"}
    training = result.training
    assert training is not None
    assert training == json.loads((out / TRAINING_FILE).read_text())
    assert (training["epoch"], training["step"]) == (3, 1200)
    assert training["loss"] == pytest.approx(2.5)
    assert training["val_loss"] == pytest.approx(2.75)
    assert training["extra"] == {"lr": pytest.approx(3e-4), "best_val_loss": pytest.approx(2.5)}
    assert training["ignored_keys"] == ["scheduler"]
    summary = training["optimizer"]
    assert summary["type"] == "AdamW"
    assert summary["hyperparameters"]["lr"] == pytest.approx(3e-4)
    assert summary["hyperparameters"]["weight_decay"] == pytest.approx(0.01)
    assert summary["hyperparameters"]["betas"] == [0.9, 0.999]
    parameters = list(model.parameters())
    assert summary["param_groups"][0]["params"] == list(range(len(parameters)))
    assert summary["state_tensors"] == 3 * len(parameters)
    assert training["resumable"] == {"ok": True, "reasons": []}
    state = load_file(out / OPTIMIZER_FILE)
    expected = optimizer.state_dict()["state"]
    assert torch.equal(state["state.0.exp_avg"], expected[0]["exp_avg"])
    assert torch.equal(state["state.27.exp_avg_sq"], expected[27]["exp_avg_sq"])


@pytest.mark.parametrize(
    ("make_optimizer", "expected_type", "state_key"),
    [
        (lambda p: torch.optim.Adam(p, lr=1e-3), "Adam", "exp_avg"),
        (lambda p: torch.optim.AdamW(p, lr=1e-3), "AdamW", "exp_avg_sq"),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), "SGD", "momentum_buffer"),
        (lambda p: torch.optim.RMSprop(p, lr=0.01), "RMSprop", "square_avg"),
        (lambda p: torch.optim.Adagrad(p, lr=0.01), "Adagrad", "sum"),
    ],
)
def test_training_checkpoint_optimizers(
    tmp_path: Path,
    make_optimizer: Callable[[Any], torch.optim.Optimizer],
    expected_type: str,
    state_key: str,
) -> None:
    model = tiny_mlp()
    optimizer = make_optimizer(model.parameters())
    one_step(model, optimizer)
    checkpoint = {
        "global_step": 7,
        "model": model.state_dict(),
        "optim": optimizer.state_dict(),
    }
    out = tmp_path / "out"
    result = convert_in_process(save(checkpoint, tmp_path / "ckpt.pt"), out)
    assert result["files"] == [MODEL_FILE, OPTIMIZER_FILE, TRAINING_FILE]
    training = json.loads((out / TRAINING_FILE).read_text())
    assert (training["epoch"], training["step"], training["loss"]) == (None, 7, None)
    assert (training["model_key"], training["optimizer_key"]) == ("model", "optim")
    assert training["optimizer"]["type"] == expected_type
    assert training["resumable"] == {"ok": True, "reasons": []}
    state = load_file(out / OPTIMIZER_FILE)
    assert torch.equal(state[f"state.3.{state_key}"], optimizer.state_dict()["state"][3][state_key])
    assert len(state) == training["optimizer"]["state_tensors"]


def test_python_float_step_goes_to_json(tmp_path: Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters())
    one_step(model, optimizer)
    optimizer_state = optimizer.state_dict()
    for entry in optimizer_state["state"].values():
        entry["step"] = float(entry["step"])
    checkpoint = {"state_dict": model.state_dict(), "optimizer": optimizer_state}
    out = tmp_path / "out"
    convert_in_process(save(checkpoint, tmp_path / "ckpt.pt"), out)
    training = json.loads((out / TRAINING_FILE).read_text())
    assert training["optimizer"]["state_scalars"]["0"] == {"step": 1.0}
    assert "state.0.step" not in load_file(out / OPTIMIZER_FILE)


def test_adam_without_decoupled_flag_is_guessed_from_weight_decay() -> None:
    def optimizer_with(weight_decay: float) -> torch_training.Optimizer:
        group = {"lr": 1e-3, "betas": (0.9, 0.999), "amsgrad": False, "params": [0]}
        return torch_training.Optimizer(
            state={}, param_groups=[{**group, "weight_decay": weight_decay}]
        )

    assert torch_training.guess_optimizer_type(optimizer_with(0.0))[0] == "Adam"
    assert torch_training.guess_optimizer_type(optimizer_with(0.01))[0] == "AdamW"


def test_optimizer_state_with_wrong_shape_is_not_resumable(tmp_path: Path) -> None:
    model = tiny_mlp()
    optimizer = torch.optim.Adam(model.parameters())
    one_step(model, optimizer)
    optimizer_state = optimizer.state_dict()
    optimizer_state["state"][0]["exp_avg"] = optimizer_state["state"][0]["exp_avg"].t().clone()
    checkpoint = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer_state}
    out = tmp_path / "out"
    convert_in_process(save(checkpoint, tmp_path / "ckpt.pt"), out)
    resumable = json.loads((out / TRAINING_FILE).read_text())["resumable"]
    assert resumable["ok"] is False
    assert resumable["reasons"] == [
        "optimizer state.0.exp_avg has shape [4, 8] but parameter 0 (0.weight) has shape [8, 4]"
    ]


def test_batchnorm_running_stats_are_not_taken_for_parameters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    one_step(model, optimizer)
    checkpoint = {
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
    }
    out = tmp_path / "out"
    convert_in_process(save(checkpoint, tmp_path / "bn.pt"), out)
    resumable = json.loads((out / TRAINING_FILE).read_text())["resumable"]
    assert resumable == {"ok": True, "reasons": []}


def test_training_checkpoint_without_optimizer_is_not_resumable(tmp_path: Path) -> None:
    checkpoint = {"epoch": 1, "model_state_dict": tiny_mlp().state_dict()}
    out = tmp_path / "out"
    assert convert_in_process(save(checkpoint, tmp_path / "c.pt"), out)["files"] == [
        MODEL_FILE,
        TRAINING_FILE,
    ]
    training = json.loads((out / TRAINING_FILE).read_text())
    assert training["optimizer"] is None
    assert training["resumable"] == {
        "ok": False,
        "reasons": ["the checkpoint has no optimizer state"],
    }


def test_views_of_one_storage_are_stored_as_separate_copies(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {
        "a": base,
        "a_again": base,
        "transposed": base.t(),
        "row": base[1],
        "empty": torch.zeros(0),
    }
    out = tmp_path / "out"
    result = convert_in_process(save(state, tmp_path / "views.pt"), out)
    assert result["tied"] == {"a_again": "a"}
    written = load_file(out / MODEL_FILE)
    assert set(written) == {"a", "transposed", "row", "empty"}
    assert torch.equal(written["transposed"], base.t())
    assert torch.equal(written["row"], base[1])


def test_metadata_values_in_a_state_dict_are_ignored(tmp_path: Path) -> None:
    state = {"w": torch.ones(2), "_metadata": {"": {"version": 1}}, "note": "hi"}
    out = tmp_path / "out"
    convert_in_process(save(state, tmp_path / "meta.pt"), out)
    assert set(load_file(out / MODEL_FILE)) == {"w"}


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ({"encoder": {"w": torch.ones(2)}, "decoder": {"w": torch.ones(2)}}, "torch_no_state_dict"),
        ({"w": torch.ones(2), "nested": {"v": torch.ones(2)}}, "torch_no_state_dict"),
        ([torch.ones(2)], "torch_no_state_dict"),
        (torch.ones(2), "torch_no_state_dict"),
        ({0: torch.ones(2)}, "torch_no_state_dict"),
        ({"epoch": 3, "loss": 1.5}, "torch_no_tensors"),
        ([], "torch_no_tensors"),
        ({"w": torch.ones(2).to_sparse()}, "torch_unsupported_tensor"),
    ],
)
def test_unrecognised_layouts(tmp_path: Path, obj: Any, code: str) -> None:
    assert rejection_in_process(save(obj, tmp_path / "x.pt"), tmp_path / "out").code == code


def test_stride_zero_expansion_is_refused_before_allocating(tmp_path: Path) -> None:
    src = save({"w": torch.zeros(1).expand(10**9)}, tmp_path / "expand.pt")
    failure = rejection_in_process(src, tmp_path / "out")
    assert failure.code == "torch_resource_limit"
    assert "4000000000 bytes" in failure.message


# --- parent-side rejections (no child spawned) ------------------------------------------------


def test_static_allowlist_matches_torch() -> None:
    torch_non_torch = {name for name in _get_allowed_globals() if not name.startswith("torch.")}
    assert torch_non_torch == torch_pickle.WEIGHTS_ONLY_NON_TORCH_GLOBALS


def test_payload_would_run_under_plain_pickle(tmp_path: Path) -> None:
    """Control: the canary mechanism works, so its absence below means nothing ran."""
    canary = tmp_path / "canary"
    pickle.loads(pickle.dumps(hostile_payloads(canary)["exec"]))
    assert canary.exists()


@pytest.mark.parametrize("payload", ["os.system", "eval", "exec", "subprocess.Popen"])
def test_reduce_payloads_are_refused(tmp_path: Path, payload: str) -> None:
    canary = tmp_path / "canary"
    evil = {"w": torch.zeros(2), "evil": hostile_payloads(canary)[payload]}
    failure = rejection(save(evil, tmp_path / "evil.pt"), tmp_path / "out")
    assert failure.code == "torch_unsafe_pickle"
    assert "weights-only loading refuses" in failure.message
    assert not canary.exists()


def test_getattr_builtins_payload_is_refused(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    src = with_data_pkl(tmp_path, "getattr", getattr_builtins_pickle(canary))
    failure = rejection(src, tmp_path / "out")
    assert failure.code == "torch_unsafe_pickle"
    assert "builtins.getattr" in failure.message
    assert not canary.exists()


def test_legacy_torch_format_is_refused(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    src = tmp_path / "legacy.pt"
    evil = {"w": torch.zeros(2), "evil": hostile_payloads(canary)["os.system"]}
    torch.save(evil, src, _use_new_zipfile_serialization=False)
    failure = rejection(src, tmp_path / "out")
    assert failure.code == "torch_legacy_format"
    assert "re-save" in failure.message
    assert not canary.exists()


def test_plain_pickle_is_refused(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    src = tmp_path / "plain.pkl"
    src.write_bytes(pickle.dumps({"w": [1.0], "evil": hostile_payloads(canary)["exec"]}))
    failure = rejection(src, tmp_path / "out")
    assert failure.code == "torch_legacy_format"
    assert "raw Python pickle" in failure.message
    assert not canary.exists()


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(tiny_mlp()), str(src))
    assert rejection(src, tmp_path / "out").code == "torch_torchscript"


@pytest.mark.parametrize(
    ("content", "code"),
    [
        (b"", "torch_not_zip"),
        (b"\x00garbage that is not a checkpoint" * 10, "torch_not_zip"),
        (b"PK\x03\x04 truncated zip", "torch_not_zip"),
    ],
)
def test_garbage_is_refused(tmp_path: Path, content: bytes, code: str) -> None:
    src = tmp_path / "garbage.pt"
    src.write_bytes(content)
    assert rejection(src, tmp_path / "out").code == code


def test_zip_that_is_not_a_torch_archive_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "hf.pt"
    with zipfile.ZipFile(src, "w") as archive:
        archive.writestr("config.json", "{}")
    failure = rejection(src, tmp_path / "out")
    assert failure.code == "torch_bad_archive"


# --- hostile files that only the child can judge -------------------------------------------


def test_child_alone_refuses_os_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the parent's static scan disabled, weights_only in the child still refuses."""
    monkeypatch.setattr(torch_pickle, "scan_pickle_globals", lambda data_pkl: None)
    canary = tmp_path / "canary"
    evil = {"w": torch.zeros(2), "evil": hostile_payloads(canary)["os.system"]}
    failure = rejection(save(evil, tmp_path / "evil.pt"), tmp_path / "out")
    assert failure.code == "torch_unsafe_pickle"
    assert "GLOBAL posix.system" in failure.message
    assert not canary.exists()


def test_torch_global_outside_allowlist_is_refused_by_weights_only(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    inner = tmp_path / "inner.pkl"
    inner.write_bytes(pickle.dumps(hostile_payloads(canary)["exec"]))
    evil = {"w": torch.zeros(2), "evil": Reduce(torch.serialization.load, str(inner))}
    failure = rejection(save(evil, tmp_path / "evil.pt"), tmp_path / "out")
    assert failure.code == "torch_unsafe_pickle"
    assert "torch.serialization.load" in failure.message
    assert not canary.exists()


def test_dup_opcode_bomb_is_refused(tmp_path: Path) -> None:
    data_pkl = b"\x80\x02}X\x01\x00\x00\x00a]" + b"2" * 10_000 + b"s."
    failure = rejection(with_data_pkl(tmp_path, "dup", data_pkl), tmp_path / "out")
    assert failure.code == "torch_unsafe_pickle"
    assert "Unsupported operand 50" in failure.message


def test_memo_expansion_bomb_is_refused(tmp_path: Path) -> None:
    failure = rejection(with_data_pkl(tmp_path, "memo", memo_bomb()), tmp_path / "out")
    assert failure.code == "torch_resource_limit"
    assert "memo-expansion" in failure.message


def test_tensor_claiming_more_than_its_storage_is_refused(tmp_path: Path) -> None:
    base = save({"w": torch.arange(7, dtype=torch.float32)}, tmp_path / "base.pt")

    def claim_200_elements(name: str, data: bytes) -> bytes:
        if not name.endswith("/data.pkl"):
            return data
        # BINPERSID, storage offset 0, shape (7,) -> shape (200,)
        assert data.count(b"QK\x00K\x07\x85") == 1
        return data.replace(b"QK\x00K\x07\x85", b"QK\x00K\xc8\x85")

    src = rewrite_zip(base, tmp_path / "oversized.pt", claim_200_elements)
    failure = rejection_in_process(src, tmp_path / "out")
    assert failure.code == "torch_load_failed"
    assert "claims more data than its stored bytes" in failure.message


def test_truncated_storage_record_is_refused(tmp_path: Path) -> None:
    base = save({"w": torch.arange(7, dtype=torch.float32)}, tmp_path / "base.pt")
    src = rewrite_zip(
        base, tmp_path / "short.pt", lambda n, d: d[:8] if n.endswith("/data/0") else d
    )
    failure = rejection_in_process(src, tmp_path / "out")
    assert failure.code == "torch_load_failed"
    assert "claims more data than its stored bytes" in failure.message


def test_child_killed_by_memory_limit_fails_cleanly(tmp_path: Path) -> None:
    src = save(tiny_mlp().state_dict(), tmp_path / "mlp.pt")
    limits = IngestLimits(torch_memory_bytes=128 << 20)
    failure = rejection(src, tmp_path / "out", limits)
    assert failure.code == "torch_resource_limit"
    assert "memory limit" in failure.message


def test_child_over_its_cpu_time_is_stopped(tmp_path: Path) -> None:
    src = save(tiny_mlp().state_dict(), tmp_path / "mlp.pt")
    failure = rejection(src, tmp_path / "out", IngestLimits(torch_cpu_seconds=1))
    assert failure.code == "torch_resource_limit"


def test_child_over_the_wall_clock_is_killed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch_pickle, "_WALL_CLOCK_GRACE_SECONDS", -9.5)
    src = save(tiny_mlp().state_dict(), tmp_path / "mlp.pt")
    failure = rejection(src, tmp_path / "out", IngestLimits(torch_cpu_seconds=10))
    assert failure.code == "torch_resource_limit"
    assert "longer than" in failure.message


def test_child_refuses_to_run_without_rlimits(monkeypatch: pytest.MonkeyPatch) -> None:
    unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
    monkeypatch.setattr(resource, "getrlimit", lambda kind: unlimited)
    with pytest.raises(SystemExit):
        torch_child._require_rlimits()


def test_result_line_parsing_is_defensive() -> None:
    assert torch_pickle._parse_result_line(b"noise\n{not json") is None
    assert torch_pickle._parse_result_line(b"[1]") is None
    assert torch_pickle._parse_result_line(b'warn\n{"ok": true}\n') == {"ok": True}
