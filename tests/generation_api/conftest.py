"""The tiny GPT-2 uploaded once per module's server, by name."""

from __future__ import annotations

import httpx
import pytest

from tests.api.test_upload import upload_raw
from tests.conftest import TinyModel


@pytest.fixture(scope="module")
def tiny_ref(client: httpx.Client, tiny: TinyModel) -> str:
    response = upload_raw(client, tiny.zip_stored, "tiny")
    assert response.status_code == 201, response.text
    return "tiny"
