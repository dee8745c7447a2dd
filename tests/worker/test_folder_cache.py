"""The materialised folders are bounded: least recently used go, never one in use anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.records import CheckpointRecord
from app.runtime.folders import remove_folder
from app.runtime.loading import materialize
from app.storage.blobs import BlobStore
from tests.conftest import TinyModel
from tests.records import stored_record
from tests.storage.pin_holder import folder_held_elsewhere


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    blobs = BlobStore(tmp_path / "data")
    blobs.prepare()
    return blobs


@pytest.fixture
def views(tiny: TinyModel, store: BlobStore) -> dict[str, CheckpointRecord]:
    """Five checkpoints (the same blobs under five ids) named a to e."""
    return {
        name: stored_record(tiny.folder, store, id=name * 32, version=i)
        for i, name in enumerate("abcde", start=1)
    }


def folders(root: Path) -> set[str]:
    return {p.name[0] for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def use(view: CheckpointRecord, store: BlobStore, root: Path, max_folders: int) -> None:
    with materialize(view, store, root, max_folders=max_folders) as held:
        assert held.path.is_dir()


def test_the_least_recently_used_folders_go_beyond_the_bound(
    tmp_path: Path, views: dict[str, CheckpointRecord], store: BlobStore
) -> None:
    root = tmp_path / "cache"
    for name in "abc":
        use(views[name], store, root, max_folders=3)
    assert folders(root) == set("abc")
    use(views["a"], store, root, max_folders=3)  # a is now the most recently used
    use(views["d"], store, root, max_folders=3)
    assert folders(root) == set("acd")
    use(views["e"], store, root, max_folders=3)
    assert folders(root) == set("ade")
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [name * 32 for name in "ade"] + [f"{name * 32}.lock" for name in "ade"]
    ), "no lock file, staging or removed folder is left of the evicted ones"


def test_a_folder_open_in_this_process_is_not_evicted(
    tmp_path: Path, views: dict[str, CheckpointRecord], store: BlobStore
) -> None:
    root = tmp_path / "cache"
    with materialize(views["a"], store, root, max_folders=1) as held:
        use(views["b"], store, root, max_folders=1)
        use(views["c"], store, root, max_folders=1)
        assert folders(root) == set("ac")  # over the bound while a is in use
        assert sorted(p.name for p in held.path.iterdir()) == sorted(
            f.path for f in views["a"].files
        )
    use(views["d"], store, root, max_folders=1)
    assert folders(root) == set("d")


def test_a_folder_in_use_by_another_process_is_not_evicted(
    tmp_path: Path, views: dict[str, CheckpointRecord], store: BlobStore
) -> None:
    root = tmp_path / "cache"
    use(views["a"], store, root, max_folders=5)
    with folder_held_elsewhere(root, views["a"].id):
        for name in "bcd":
            use(views[name], store, root, max_folders=2)
        assert folders(root) == set("ad"), "a is the oldest, but the other process holds it"
    use(views["e"], store, root, max_folders=2)
    assert folders(root) == set("de")


def test_deletion_leaves_a_folder_another_process_holds(
    tmp_path: Path, views: dict[str, CheckpointRecord], store: BlobStore
) -> None:
    root = tmp_path / "cache"
    use(views["a"], store, root, max_folders=5)
    with folder_held_elsewhere(root, views["a"].id):
        assert remove_folder(root, views["a"].id) is False
        assert folders(root) == {"a"}
    assert remove_folder(root, views["a"].id) is True
    assert list(root.iterdir()) == []
