"""What a consistent registry looks like on disk and over HTTP, after whatever happened to it."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import httpx


def all_checkpoints(client: httpx.Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        response = client.get("/v1/checkpoints", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def blobs_on_disk(data_dir: Path) -> set[str]:
    return {path.name for path in (data_dir / "blobs").rglob("*") if path.is_file()}


def temp_entries(data_dir: Path) -> list[Path]:
    return list((data_dir / "tmp").iterdir())


def row_statuses(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / "registry.sqlite3") as db:
        return [status for (status,) in db.execute("SELECT status FROM checkpoints")]


def assert_consistent(data_dir: Path, client: httpx.Client) -> list[dict[str, Any]]:
    """Every row ready with all its blobs; no blob without a row; no temp file. Returns rows."""
    rows = all_checkpoints(client)
    assert row_statuses(data_dir) == ["ready"] * len(rows)
    referenced = {row["sha256"] for row in rows} | {
        file["sha256"] for row in rows for file in row["files"]
    }
    on_disk = blobs_on_disk(data_dir)
    assert referenced - on_disk == set(), "rows whose blobs are missing"
    assert on_disk - referenced == set(), "blobs no row references"
    assert temp_entries(data_dir) == []
    return rows


def assert_downloads(client: httpx.Client, ref: str, content: bytes) -> None:
    response = client.get(f"/v1/checkpoints/{ref}/download")
    assert response.status_code == 200, response.text
    assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(content).hexdigest()
