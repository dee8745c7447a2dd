"""`app.client.Client` against a real server: every endpoint on the tiny model."""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from app.client import Checkpoint, Client, RegistryError
from tests.conftest import TinyModel
from tests.live_server import LiveServer, free_port


@pytest.fixture(scope="module")
def registry(server: LiveServer) -> Iterator[Client]:
    with Client(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def stored(registry: Client, tiny: TinyModel) -> Checkpoint:
    return registry.upload(tiny.zip_stored, name="tiny")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_upload_format_gives_the_same_weights(
    registry: Client, stored: Checkpoint, tiny: TinyModel
) -> None:
    uploads = {
        "zip-deflated": registry.upload(tiny.zip_deflated, name="fmt-deflated"),
        "safetensors": registry.upload(tiny.safetensors, name="fmt-st"),
        "torch": registry.upload(tiny.state_dict_pt, name="fmt-pt"),
        "folder": registry.upload(tiny.folder, name="fmt-folder"),
        "folder-deflated": registry.upload(tiny.folder, name="fmt-folder-d", deflate=True),
    }
    with tiny.safetensors.open("rb") as handle:
        uploads["file object"] = registry.upload(handle, name="fmt-handle")
    assert (
        stored.created
        and stored.format == "hf_zip"
        and stored.sha256 == sha256_file(tiny.zip_stored)
    )
    for label, checkpoint in uploads.items():
        assert checkpoint.created, label
        assert checkpoint.weights_digest == stored.weights_digest, label
        assert checkpoint.parameter_count == stored.parameter_count, label
    assert uploads["safetensors"].format == uploads["file object"].format == "safetensors"
    assert uploads["file object"].sha256 == sha256_file(tiny.safetensors)
    assert uploads["torch"].format == "torch"


def test_folder_is_zipped_on_the_fly_stored_unless_deflate(
    registry: Client, tiny: TinyModel, tmp_path: Path
) -> None:
    stored = registry.upload(tiny.folder, name="folder-zip")
    deflated = registry.upload(tiny.folder, name="folder-zip", deflate=True)
    members = {f.path for f in stored.files if f.origin == "member"}
    expected = {
        p.relative_to(tiny.folder).as_posix() for p in tiny.folder.rglob("*") if p.is_file()
    }
    assert members == expected
    assert stored.filename == "my_model.zip"
    # STORED: the archive is its members plus headers; deflate shrinks the text files
    assert 1.0 < stored.compression_ratio < 1.01
    assert deflated.size_bytes < stored.size_bytes
    download = registry.download("folder-zip@1", tmp_path)
    with zipfile.ZipFile(download.path) as archive:
        names = archive.namelist()
        assert {i.compress_type for i in archive.infolist()} == {zipfile.ZIP_STORED}
        config = archive.read("my_model/config.json")
    assert set(names) == {f"my_model/{name}" for name in expected}
    assert config == (tiny.folder / "config.json").read_bytes()


def test_identical_upload_is_not_stored_twice(
    registry: Client, stored: Checkpoint, tiny: TinyModel
) -> None:
    again = registry.upload(tiny.zip_stored, name="tiny")
    assert not again.created
    assert again.id == stored.id


def test_upload_reports_progress_in_bytes(registry: Client, tiny: TinyModel) -> None:
    reports: list[tuple[int, int | None]] = []
    registry.upload(tiny.safetensors, name="progress", progress=lambda d, t: reports.append((d, t)))
    size = tiny.safetensors.stat().st_size
    assert reports[-1] == (size, size)
    done = [d for d, _ in reports]
    assert done == sorted(done) and len(done) >= 2
    folder_reports: list[tuple[int, int | None]] = []
    registry.upload(
        tiny.folder, name="progress-f", progress=lambda d, t: folder_reports.append((d, t))
    )
    sent, total = folder_reports[-1]
    assert sent == total == registry.get("progress-f").size_bytes


def test_list_pages_with_cursor(registry: Client, stored: Checkpoint) -> None:
    for index in range(3):
        registry.upload(io.BytesIO(_tiny_safetensors(index)), name=f"page-{index}")
    first = registry.list(limit=2)
    assert len(first.items) == 2 and first.next_cursor is not None
    everything = list(registry.iter_checkpoints(page_size=2))
    ids = [c.id for c in everything]
    assert len(ids) == len(set(ids)) >= 4
    assert [c.created_at for c in everything] == sorted(
        (c.created_at for c in everything), reverse=True
    )
    assert ids[:2] == [c.id for c in first.items]
    assert [c.name for c in registry.list(name="page-1").items] == ["page-1"]


def _tiny_safetensors(seed: int) -> bytes:
    from safetensors.torch import save

    torch.manual_seed(seed)
    return save({"layer.weight": torch.randn(4, 4)})


def test_get_tensors_and_files(registry: Client, stored: Checkpoint, tiny: TinyModel) -> None:
    assert registry.get("tiny@1") == registry.get(stored.id)
    listing = registry.tensors("tiny")
    assert listing.checkpoint_id == stored.id
    assert len(listing.tensors) == stored.tensor_count
    wte = next(t for t in listing.tensors if t.name == "transformer.wte.weight")
    assert wte.shape == list(tiny.model.transformer.wte.weight.shape)
    assert registry.read_file("tiny", "config.json") == (tiny.folder / "config.json").read_bytes()


def test_download_streams_and_verifies(
    registry: Client, stored: Checkpoint, tiny: TinyModel, tmp_path: Path
) -> None:
    reports: list[tuple[int, int | None]] = []
    done = registry.download(
        "tiny", tmp_path / "copy.zip", progress=lambda d, t: reports.append((d, t))
    )
    assert done.path.read_bytes() == tiny.zip_stored.read_bytes()
    assert done.sha256 == stored.sha256
    assert reports[-1] == (done.size, done.size)
    into_folder = registry.download("tiny", tmp_path)
    assert into_folder.path == tmp_path / "model.zip"
    config = registry.download("tiny", tmp_path, path="config.json")
    assert config.path.read_bytes() == (tiny.folder / "config.json").read_bytes()
    assert list(tmp_path.glob("*.part")) == []


def test_diff_aliases_and_delete(
    registry: Client, stored: Checkpoint, tiny: TinyModel, tmp_path: Path
) -> None:
    state = {k: v.clone() for k, v in tiny.model.state_dict().items() if k != "lm_head.weight"}
    state["transformer.h.0.mlp.c_fc.weight"] += 0.5
    changed_path = tmp_path / "changed.safetensors"
    save_file(state, changed_path)
    changed = registry.upload(changed_path, name="tiny-changed")
    diff = registry.diff("tiny", changed.id)
    assert not diff.identical_weights
    assert diff.summary["changed"] == 1
    row = next(t for t in diff.tensors if t.status == "changed")
    assert row.name == "transformer.h.0.mlp.c_fc.weight"
    assert row.max_abs_diff == pytest.approx(0.5)
    assert registry.diff("tiny", "fmt-st").identical_weights

    assert "prod" in registry.set_alias("tiny@1", "prod").aliases
    assert registry.get("tiny:prod").id == stored.id
    assert "prod" not in registry.delete_alias("tiny@1", "prod").aliases

    registry.delete(changed.id)
    with pytest.raises(RegistryError) as missing:
        registry.get(changed.id)
    assert missing.value.status == 404


def test_registry_errors_carry_code_and_message(registry: Client, tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as not_found:
        registry.get("nope")
    assert (not_found.value.status, not_found.value.code) == (404, "checkpoint_not_found")
    assert "nope" in not_found.value.message
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(RegistryError) as rejected:
        registry.upload(garbage, name="garbage")
    assert (rejected.value.status, rejected.value.code) == (422, "unknown_format")
    with pytest.raises(RegistryError) as bad_alias:
        registry.set_alias("tiny", "latest")
    assert (bad_alias.value.status, bad_alias.value.code) == (409, "reserved_alias")
    assert "'latest'" in bad_alias.value.message


def test_generate_and_stream_agree(registry: Client, stored: Checkpoint) -> None:
    whole = registry.generate("tiny", "hello world", max_new_tokens=8, details=True)
    assert whole.details is not None and whole.details.generated_tokens == 8
    events = list(registry.generate_stream("tiny", "hello world", max_new_tokens=8))
    assert len(events) == 8
    assert "".join(e.token.text for e in events) == whole.generated_text
    assert events[-1].generated_text == whole.generated_text
    assert all(e.generated_text is None for e in events[:-1])


def test_generation_errors_in_every_dialect(registry: Client, stored: Checkpoint) -> None:
    with pytest.raises(RegistryError) as tgi:
        registry.generate("tiny", "hello", max_new_tokens=0)
    assert (tgi.value.status, tgi.value.code) == (422, "validation")
    assert "max_new_tokens" in tgi.value.message
    with pytest.raises(RegistryError) as streamed:
        list(registry.generate_stream("tiny", "hello", max_new_tokens=10_000))
    assert (streamed.value.status, streamed.value.code) == (422, "validation")
    with pytest.raises(RegistryError) as openai:
        registry.complete("tiny", "hello", max_tokens=0)
    assert openai.value.status == 400
    assert openai.value.code == "invalid_request_error"
    assert "max_tokens" in openai.value.message


def test_openai_completions_models_and_info(registry: Client, stored: Checkpoint) -> None:
    greedy = registry.generate("tiny", "hello world", max_new_tokens=6)
    completion = registry.complete("tiny@1", "hello world", max_tokens=6, temperature=0)
    assert completion.choices[0].text == greedy.generated_text
    assert completion.usage is not None and completion.usage.completion_tokens == 6
    assert "tiny@1" in {card.id for card in registry.models()}
    assert registry.info("tiny")["model_id"] == "tiny@1"


def test_health(registry: Client) -> None:
    health = registry.health()
    assert health.ok and health.problems == []


def test_unreachable_server_is_a_registry_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}") as nobody, pytest.raises(RegistryError) as error:
        nobody.health()
    assert error.value.status is None
    assert error.value.code == "unreachable"
