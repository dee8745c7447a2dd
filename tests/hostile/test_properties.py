"""Property-based: random zip layouts and random safetensors headers never get a 5xx.

On 4xx nothing is left behind; on 2xx the checkpoint is consistent (its stored upload is there
and hashes to the recorded sha256). Derandomized so every run tries the same examples.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from typing import Any

import httpx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.hostile.builders import entry, raw_file, zip_bytes
from tests.hostile.invariants import Footprint, assert_nothing_left, post_raw
from tests.live_server import LiveServer

SERVER_SETTINGS = {"max_upload_bytes": 4 << 20, "max_zip_entries": 16}
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,  # derandomized: nothing to replay, and no .hypothesis/ in the checkout
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- zip layouts -----------------------------------------------------------------------------

NAME_PIECES = st.sampled_from(
    [
        "my_model",
        "a",
        "b.txt",
        "config.json",
        "model.safetensors",
        "..",
        ".",
        "",
        "C:",
        "\\",
        "..\\x",
        "inner.zip",
        "__MACOSX",
        "._x",
        "Config.JSON",
        "\u2025",
        "caf\u00e9",
        "cafe\u0301",
    ]
)
NAMES = st.lists(NAME_PIECES, min_size=1, max_size=4).map("/".join)
VALID_WEIGHTS = raw_file({"w": entry("U8", [16], 0, 16)}, bytes(range(16)))
CONTENTS = st.one_of(
    st.binary(max_size=512),
    st.integers(0, 3 << 20).map(bytes),  # zeros: highly compressible
    st.just(VALID_WEIGHTS),
    st.just(b'{"model_type": "gpt2"}'),
)
ENTRIES = st.lists(st.tuples(NAMES, CONTENTS), min_size=1, max_size=6)
METHODS = st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])


@st.composite
def zip_uploads(draw: st.DrawFn) -> bytes:
    entries = draw(ENTRIES)
    if draw(st.booleans()):  # a loadable model beside the random entries: some are accepted
        entries = [("my_model/model.safetensors", VALID_WEIGHTS), *entries]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate names
        data = bytes(zip_bytes(entries, draw(METHODS)))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut] + draw(st.binary(max_size=8))


# --- safetensors headers -------------------------------------------------------------------

DTYPES = st.sampled_from(["F32", "F16", "BF16", "U8", "I64", "BOOL", "F4", "Q9", "", 4, None])
DIMS = st.lists(st.one_of(st.integers(0, 8), st.integers(-2, 2**64), st.just("2")), max_size=3)
OFFSET = st.one_of(st.integers(0, 64), st.integers(-1, 2**64), st.floats(0, 8))
TENSOR = st.fixed_dictionaries(
    {"dtype": DTYPES, "shape": DIMS, "data_offsets": st.lists(OFFSET, min_size=0, max_size=3)}
)
JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@st.composite
def safetensors_uploads(draw: st.DrawFn) -> bytes:
    header: dict[str, Any] = {"w": entry("U8", [8], 0, 8)}  # valid as it stands
    if draw(st.booleans()):
        header.update(
            draw(st.dictionaries(st.text(min_size=0, max_size=6), TENSOR | JSONISH, max_size=3))
        )
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), JSONISH, max_size=2))
    data = draw(st.one_of(st.just(bytes(8)), st.binary(max_size=64)))
    return raw_file(json.dumps(header).encode(), data)


# --- the invariant -------------------------------------------------------------------------


def check_outcome(server: LiveServer, client: httpx.Client, data: bytes) -> None:
    before = Footprint.of(server, client)
    response = post_raw(client, data, name="prop")
    assert response.status_code < 500, response.text
    event(f"status {response.status_code}")
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and error["message"]
        assert_nothing_left(server, client, before)
        return
    checkpoint = response.json()
    stored = client.get(f"/v1/checkpoints/{checkpoint['id']}/download")
    assert stored.status_code == 200
    assert hashlib.sha256(stored.content).hexdigest() == checkpoint["sha256"]
    assert len(stored.content) == checkpoint["size_bytes"]


@PROPERTY
@given(data=zip_uploads())
def test_random_zip_layouts(server: LiveServer, client: httpx.Client, data: bytes) -> None:
    check_outcome(server, client, data)


@PROPERTY
@given(data=safetensors_uploads())
def test_random_safetensors_headers(server: LiveServer, client: httpx.Client, data: bytes) -> None:
    check_outcome(server, client, data)
