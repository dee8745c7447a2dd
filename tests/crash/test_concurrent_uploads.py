"""50 uploads at once (5 contents x 10 copies, under 2 names each) and readers in a loop,
against one real `ckpt serve` on SQLite: all answered correctly, each content stored once."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.crash.payloads import model_zip, safetensors_bytes
from tests.crash.registry_state import assert_consistent, blobs_on_disk
from tests.crash.serve_process import ServeProcess

COPIES = 10
NAMES_PER_CONTENT = 2


def contents() -> list[bytes]:
    return [safetensors_bytes(seed) for seed in range(3)] + [model_zip(seed) for seed in (3, 4)]


def stored_digests(content: bytes) -> set[str]:
    """The blobs an upload needs: itself and, for a zip, each of its files."""
    digests = {hashlib.sha256(content).hexdigest()}
    if content.startswith(b"PK"):
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            members = archive.namelist()
            digests |= {hashlib.sha256(archive.read(name)).hexdigest() for name in members}
    return digests


def upload(url: str, content: bytes, name: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=120) as client:
        return client.post(
            "/v1/checkpoints",
            content=content,
            params={"name": name},
            headers={"Content-Type": "application/octet-stream"},
        )


def read_until(url: str, done: threading.Event) -> list[httpx.Response]:
    """List, get and list tensors of whatever is there, over and over, until `done`."""
    responses = []
    with httpx.Client(base_url=url, timeout=120) as client:
        while not done.is_set():
            listed = client.get("/v1/checkpoints", params={"limit": "200"})
            responses.append(listed)
            for item in listed.json().get("items", [])[:3]:
                responses.append(client.get(f"/v1/checkpoints/{item['id']}"))
                responses.append(client.get(f"/v1/checkpoints/{item['id']}/tensors"))
    return responses


def test_fifty_concurrent_uploads_with_readers(tmp_path: Path) -> None:
    files = contents()
    jobs = [
        (content, f"model-{index}-{copy % NAMES_PER_CONTENT}")
        for copy in range(COPIES)
        for index, content in enumerate(files)
    ]
    done = threading.Event()
    with ServeProcess(tmp_path / "data") as server, ThreadPoolExecutor(len(jobs) + 3) as pool:
        readers = [pool.submit(read_until, server.url, done) for _ in range(3)]
        uploads = [pool.submit(upload, server.url, content, name) for content, name in jobs]
        answers = [future.result() for future in uploads]
        done.set()
        reads = [response for reader in readers for response in reader.result()]
        with server.client() as client:
            rows = assert_consistent(server.data_dir, client)

    assert [r.status_code for r in reads] == [200] * len(reads), [r.text for r in reads[:3]]
    by_name: defaultdict[str, list[httpx.Response]] = defaultdict(list)
    for (_, name), answer in zip(jobs, answers, strict=True):
        by_name[name].append(answer)
    for name, responses in by_name.items():
        statuses = Counter(r.status_code for r in responses)
        assert statuses == {201: 1, 200: COPIES // NAMES_PER_CONTENT - 1}, (name, statuses)
        assert len({r.json()["id"] for r in responses}) == 1
        assert {r.json()["status"] for r in responses} == {"ready"}
    assert len(rows) == len(files) * NAMES_PER_CONTENT
    assert blobs_on_disk(server.data_dir) == set().union(*map(stored_digests, files))
    log = server.log_text()
    assert "database is locked" not in log
    assert "Traceback" not in log
