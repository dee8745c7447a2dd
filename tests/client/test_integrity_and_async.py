"""Download verification through a corrupting proxy, the API key header, and AsyncClient."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client import AsyncClient, Checkpoint, ChecksumMismatch, Client, RegistryError
from tests.client.proxy import CorruptingProxy
from tests.conftest import TinyModel
from tests.live_server import LiveServer


@pytest.fixture(scope="module")
def stored(server: LiveServer, tiny: TinyModel) -> Checkpoint:
    with Client(server.url) as client:
        return client.upload(tiny.zip_stored, name="tiny")


@pytest.fixture
def proxy(server: LiveServer) -> Iterator[CorruptingProxy]:
    with CorruptingProxy(server.url) as relay:
        yield relay


def test_corrupted_download_raises_and_leaves_nothing(
    proxy: CorruptingProxy, stored: Checkpoint, tmp_path: Path
) -> None:
    with Client(proxy.url) as client:
        intact = client.download("tiny", tmp_path / "intact.zip")
        assert intact.sha256 == stored.sha256
        proxy.corrupt_downloads = True
        with pytest.raises(ChecksumMismatch) as mismatch:
            client.download("tiny", tmp_path / "corrupt.zip")
    assert mismatch.value.expected == stored.sha256
    assert mismatch.value.actual != stored.sha256
    assert mismatch.value.code == "checksum_mismatch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["intact.zip"]


def test_download_against_a_wrong_expected_hash(
    server: LiveServer, stored: Checkpoint, tmp_path: Path
) -> None:
    with Client(server.url) as client, pytest.raises(ChecksumMismatch) as mismatch:
        client.download("tiny", tmp_path / "x.zip", expected_sha256="0" * 64)
    assert mismatch.value.actual == stored.sha256
    assert list(tmp_path.iterdir()) == []


def test_api_key_from_the_environment_is_sent_as_bearer(
    proxy: CorruptingProxy, stored: Checkpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CKPT_API_KEY", "ck_from_env")
    monkeypatch.setenv("CKPT_URL", proxy.url)
    with Client() as client:
        client.get("tiny")
    with Client(api_key="ck_explicit") as client:
        client.get("tiny")
    sent = [headers.get("authorization") for headers in proxy.seen_headers]
    assert sent == ["Bearer ck_from_env", "Bearer ck_explicit"]


def test_async_client_matches_the_sync_client(
    server: LiveServer, stored: Checkpoint, tiny: TinyModel, tmp_path: Path
) -> None:
    async def scenario() -> tuple[Checkpoint, Checkpoint, list[str], str, str, Path]:
        async with AsyncClient(server.url) as client:
            uploaded = await client.upload(tiny.folder, name="async-folder")
            fetched = await client.get("tiny")
            tokens = [
                event.token.text
                async for event in client.generate_stream("tiny", "hello world", max_new_tokens=6)
            ]
            whole = await client.generate("tiny", "hello world", max_new_tokens=6)
            page = await client.list(name="async-folder")
            downloaded = await client.download("tiny", tmp_path / "async.zip")
            with pytest.raises(RegistryError) as missing:
                await client.get("nope")
            assert (missing.value.status, missing.value.code) == (404, "checkpoint_not_found")
            assert [c.id for c in page.items] == [uploaded.id]
            return (
                uploaded,
                fetched,
                tokens,
                whole.generated_text,
                downloaded.sha256,
                downloaded.path,
            )

    uploaded, fetched, tokens, text, sha256, path = asyncio.run(scenario())
    with Client(server.url) as sync:
        assert sync.get("tiny") == fetched
        assert sync.get("async-folder").weights_digest == stored.weights_digest
        assert (
            "".join(tokens)
            == text
            == sync.generate("tiny", "hello world", max_new_tokens=6).generated_text
        )
    assert uploaded.created and uploaded.format == "hf_zip"
    assert sha256 == stored.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
