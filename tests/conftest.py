"""Session-wide fixtures: one tiny GPT-2 + tokenizer, saved in every upload format."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db.engine import Database
from app.db.migrate import upgrade
from app.db.scratch import drop_leftovers
from tests.database import fresh_database, on_postgresql, postgres_unreachable
from tests.live_server import LiveServer
from tests.models import build_gpt2, build_tokenizer, save_model_folder, zip_folder


@dataclass
class TinyModel:
    model: Any
    tokenizer: Any
    folder: Path
    safetensors: Path
    zip_stored: Path
    zip_deflated: Path
    state_dict_pt: Path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    import torch

    root = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = build_tokenizer()
    model = build_gpt2(len(tokenizer))
    folder = save_model_folder(model, tokenizer, root / "my_model")
    state_dict_pt = root / "model.pt"
    torch.save(model.state_dict(), state_dict_pt)
    return TinyModel(
        model=model,
        tokenizer=tokenizer,
        folder=folder,
        safetensors=folder / "model.safetensors",
        zip_stored=zip_folder(folder, root / "model.zip"),
        zip_deflated=zip_folder(folder, root / "deflated.zip", compression=zipfile.ZIP_DEFLATED),
        state_dict_pt=state_dict_pt,
    )


def leftover_temp_files(data_dir: Path) -> list[Path]:
    return list((data_dir / "tmp").iterdir())


def blob_count(data_dir: Path) -> int:
    return sum(1 for p in (data_dir / "blobs").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """One real server per test module; a module sets SERVER_SETTINGS to override settings."""
    overrides = getattr(request.module, "SERVER_SETTINGS", {})
    name = request.module.__name__.rsplit(".", 1)[-1]
    with LiveServer(tmp_path_factory.mktemp(name) / "data", **overrides) as live:
        yield live


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for one test: a SQLite file, or a fresh PostgreSQL database."""
    with fresh_database(request.node.name, f"sqlite:///{tmp_path / 'registry.sqlite3'}") as url:
        yield url


@pytest.fixture
def migrated_database(database_url: str) -> Iterator[Database]:
    """`database_url` migrated to the head, opened as the app opens it."""
    upgrade(database_url)
    database = Database(database_url)
    yield database
    database.dispose()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: it may select on `database`
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run only where CUDA is available."""
    _select_for_database(items)
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# A test that uses one of these fixtures talks to a database: marked `database` automatically.
DATABASE_FIXTURES = frozenset({"server", "database_url"})


def _select_for_database(items: list[pytest.Item]) -> None:
    """`sqlite_only` / `postgres_only` tests skip on the other pass; no PostgreSQL, no PG pass."""
    unreachable = postgres_unreachable() if on_postgresql() else None
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if DATABASE_FIXTURES & fixtures or "postgres_only" in item.keywords:
            item.add_marker(pytest.mark.database)
        if unreachable:
            item.add_marker(pytest.mark.skip(reason=unreachable))
        elif on_postgresql() and "sqlite_only" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="SQLite-specific (PostgreSQL pass)"))
        elif not on_postgresql() and "postgres_only" in item.keywords:
            reason = "runs on the PostgreSQL pass (CKPT_TEST_DATABASE=postgresql)"
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if on_postgresql() and not postgres_unreachable():
        drop_leftovers()
