"""The model-folder cache: links to the blobs, checked on every use, rebuilt when broken."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from app.generation import ModelCache, load_model_folder
from app.generation.cache import stored_checkpoint_loader
from app.records import CheckpointRecord
from app.runtime.loading import CheckpointFileMissing, materialize
from app.storage.blobs import BlobStore
from tests.conftest import TinyModel
from tests.records import stored_record

CPU = torch.device("cpu")


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> BlobStore:
    """A store opened on a relative path, as the default `./data` used to give it."""
    monkeypatch.chdir(tmp_path)
    blobs = BlobStore(Path("data"))
    blobs.prepare()
    return blobs


@pytest.fixture
def view(tiny: TinyModel, store: BlobStore) -> CheckpointRecord:
    return stored_record(tiny.folder, store)


def assert_healthy(folder: Path, view: CheckpointRecord, store: BlobStore) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(f.path for f in view.files)
    for file in view.files:
        link = folder / file.path
        target = Path(os.readlink(link))
        assert target.is_absolute(), f"{file.path} -> {target}"
        assert target == store.local_path(file.sha256).resolve()
        assert link.stat().st_size == file.size


def cache_entry(tmp_path: Path, view: CheckpointRecord, store: BlobStore) -> Path:
    with materialize(view, store, tmp_path / "cache") as held:
        folder = held.path
    assert_healthy(folder, view, store)
    return folder


def relink(link: Path, target: Path | str) -> None:
    link.unlink()
    link.symlink_to(target)


def relative_link(folder: Path) -> None:
    """What `./data` gave before settings resolved it: a link relative to the working dir."""
    link = folder / "tokenizer.json"
    relink(link, os.path.relpath(os.readlink(link), Path.cwd()))


def dangling_link(folder: Path) -> None:
    relink(folder / "model.safetensors", folder.parent / "gone" / "model.safetensors")


def missing_file(folder: Path) -> None:
    (folder / "config.json").unlink()


def wrong_blob(folder: Path) -> None:
    relink(folder / "config.json", os.readlink(folder / "tokenizer_config.json"))


def stray_file(folder: Path) -> None:
    (folder / "pytorch_model.bin").write_bytes(b"not from this checkpoint")


def copy_instead_of_link(folder: Path) -> None:
    link = folder / "version.txt"
    data = link.read_bytes()
    link.unlink()
    link.write_bytes(data)


def emptied(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


DAMAGE = [
    relative_link,
    dangling_link,
    missing_file,
    wrong_blob,
    stray_file,
    copy_instead_of_link,
    emptied,
]


def test_links_are_absolute_even_from_a_store_opened_on_a_relative_path(
    tmp_path: Path, view: CheckpointRecord, store: BlobStore
) -> None:
    folder = cache_entry(tmp_path, view, store)
    assert folder == tmp_path / "cache" / view.id


def test_a_sound_entry_is_used_as_it_is(
    tmp_path: Path, view: CheckpointRecord, store: BlobStore
) -> None:
    folder = cache_entry(tmp_path, view, store)
    before = {p.name: p.lstat().st_ino for p in folder.iterdir()}
    with materialize(view, store, tmp_path / "cache") as held:
        assert held.path == folder
    assert {p.name: p.lstat().st_ino for p in folder.iterdir()} == before


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda damage: damage.__name__)
def test_a_damaged_entry_is_rebuilt_on_the_next_use(
    tmp_path: Path, view: CheckpointRecord, store: BlobStore, damage: Callable[[Path], None]
) -> None:
    folder = cache_entry(tmp_path, view, store)
    damage(folder)
    with materialize(view, store, tmp_path / "cache") as held:
        assert held.path == folder
    assert_healthy(folder, view, store)
    no_staging_left = [view.id, f"{view.id}.lock"]
    assert sorted(p.name for p in folder.parent.iterdir()) == no_staging_left


def test_generation_heals_a_damaged_entry(
    tmp_path: Path, view: CheckpointRecord, store: BlobStore
) -> None:
    folder = cache_entry(tmp_path, view, store)
    for damage in (relative_link, dangling_link, missing_file):
        damage(folder)
    loader = stored_checkpoint_loader(lambda _id: view, store, tmp_path / "cache", CPU)
    loaded = loader(view.id)
    assert loaded.tokenizer("hello world")["input_ids"]
    assert_healthy(folder, view, store)


def test_a_blob_missing_from_the_store_is_named(
    tmp_path: Path, view: CheckpointRecord, store: BlobStore
) -> None:
    (tokenizer,) = [f for f in view.files if f.path == "tokenizer.json"]
    store.local_path(tokenizer.sha256).unlink()
    with pytest.raises(CheckpointFileMissing) as raised:
        materialize(view, store, tmp_path / "cache")
    assert raised.value.status == 424
    assert raised.value.message == (
        f"checkpoint tiny@1: file tokenizer.json (blob {tokenizer.sha256[:12]}) "
        "cannot be read (No such file or directory)"
    )


def test_a_truncated_blob_is_named(
    tmp_path: Path, view: CheckpointRecord, store: BlobStore
) -> None:
    (weights,) = [f for f in view.files if f.path == "model.safetensors"]
    blob = store.local_path(weights.sha256)
    blob.write_bytes(blob.read_bytes()[:100])
    with pytest.raises(CheckpointFileMissing, match=r"file model\.safetensors \(blob ") as raised:
        materialize(view, store, tmp_path / "cache")
    assert raised.value.message.endswith(f"is 100 bytes in the blob store, {weights.size} recorded")


def test_generation_answers_424_naming_the_missing_file(
    tmp_path: Path, view: CheckpointRecord, store: BlobStore
) -> None:
    (weights,) = [f for f in view.files if f.path == "model.safetensors"]
    store.local_path(weights.sha256).unlink()
    loader = stored_checkpoint_loader(lambda _id: view, store, tmp_path / "cache", CPU)
    cache = ModelCache(loader, budget_bytes=1 << 30)
    try:
        with pytest.raises(CheckpointFileMissing, match=r"file model\.safetensors ") as raised:
            asyncio.run(cache.get(view.id))
    finally:
        cache.close()
    assert (raised.value.status, raised.value.code) == (424, "checkpoint_file_missing")


def test_a_folder_with_a_dangling_tokenizer_file_names_it(tiny: TinyModel, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny.folder, tmp_path / "model"))
    relink(folder / "tokenizer.json", tmp_path / "gone.json")
    with pytest.raises(CheckpointFileMissing) as raised:
        load_model_folder(folder, CPU)
    assert raised.value.message == f"{folder}: cannot read tokenizer.json"
