"""ModelCache.discard (a checkpoint was deleted): a resident model goes, a load in flight still
answers its waiters but is not kept."""

from __future__ import annotations

import asyncio

from app.generation import ModelCache
from tests.generation.conftest import TinyFolder
from tests.generation.test_cache import SlowLoader


def test_a_model_discarded_while_loading_is_not_kept(tiny_folder: TinyFolder) -> None:
    cache = ModelCache(SlowLoader(tiny_folder, delay=0.3), budget_bytes=1 << 30)

    async def run() -> None:
        loading = asyncio.create_task(cache.get("deleted"))
        await asyncio.sleep(0.1)  # the load is in flight
        assert cache.discard("deleted") is False  # not resident yet
        loaded = await loading
        assert loaded.model is not None
        assert cache.resident() == []
        await cache.get("deleted")  # asked again (the id came back): loaded and kept anew
        assert cache.resident() == ["deleted"]
        assert cache.discard("deleted") is True

    asyncio.run(run())
    assert cache.loads["deleted"] == 2
    assert cache.resident() == [] and cache.resident_bytes == 0
    cache.close()
