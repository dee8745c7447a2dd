"""Paths are resolved once, when settings load; nothing downstream depends on the working dir."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.ingest.inspect import inspect_upload
from app.ingest.spool import HEAD_BYTES, SpooledUpload
from app.ingest.types import IngestLimits
from tests.conftest import TinyModel


@pytest.fixture
def in_scratch_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory holding a real folder and a symlink to it; no CKPT_ variables."""
    monkeypatch.chdir(tmp_path)
    for name in ("CKPT_DATA_DIR", "CKPT_DATABASE_URL", "CKPT_STORAGE_URL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "real").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    return tmp_path.resolve()


def test_the_default_data_dir_is_absolute_under_the_working_dir(in_scratch_dir: Path) -> None:
    settings = Settings()
    assert settings.data_dir == in_scratch_dir / "data"
    assert settings.resolved_database_url == f"sqlite:///{in_scratch_dir}/data/registry.sqlite3"


def test_a_symlinked_data_dir_is_resolved(in_scratch_dir: Path) -> None:
    assert Settings(data_dir=Path("linked/data")).data_dir == in_scratch_dir / "real" / "data"


def test_a_relative_sqlite_url_is_made_absolute(in_scratch_dir: Path) -> None:
    settings = Settings(database_url="sqlite:///linked/x.db?timeout=3")
    assert settings.resolved_database_url == f"sqlite:///{in_scratch_dir}/real/x.db?timeout=3"


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "postgresql+psycopg://me:p%40ss@db:5432/registry"]
)
def test_other_database_urls_are_kept_as_given(in_scratch_dir: Path, url: str) -> None:
    assert Settings(database_url=url).resolved_database_url == url


def test_a_file_storage_url_is_resolved(in_scratch_dir: Path) -> None:
    settings = Settings(storage_url=f"file://{in_scratch_dir}/linked/../linked/blob%20root")
    assert settings.storage_url == f"file://{in_scratch_dir}/real/blob%20root"


def test_a_file_storage_url_with_a_host_is_refused(in_scratch_dir: Path) -> None:
    with pytest.raises(ValidationError, match=r"must be file:///dir \(an absolute path\)"):
        Settings(storage_url="file://data/blobs")


@pytest.mark.parametrize("workdir", ["work", "linked"])
def test_a_torch_upload_is_converted_in_a_relative_or_symlinked_workdir(
    in_scratch_dir: Path, tiny: TinyModel, workdir: str
) -> None:
    """The converter reports resolved paths; the 500 of the relative `./data` came from here."""
    Path(workdir).mkdir(exist_ok=True)
    data = tiny.state_dict_pt.read_bytes()
    spooled = SpooledUpload(
        tiny.state_dict_pt, len(data), hashlib.sha256(data).hexdigest(), data[:HEAD_BYTES], None
    )
    inspection = inspect_upload(spooled, Path(workdir), config=None, limits=IngestLimits())
    assert sorted(f.path for f in inspection.files) == ["config.json", "model.safetensors"]
    assert inspection.sources["model.safetensors"].is_absolute()
