"""schemathesis: cases generated from the running server's own /openapi.json never get a 5xx.

Operations are driven one by one with hypothesis (schemathesis' pytest fixture loader does not
run under this pytest), each with a bounded, derandomized number of examples.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.live_server import LiveServer

# auth off: a key the fuzzer creates through POST /v1/keys must not lock it out of the rest.
SERVER_SETTINGS = {"max_upload_bytes": 1 << 20, "body_timeout_seconds": 5.0, "auth": "off"}
EXAMPLES_PER_OPERATION = 12
FUZZ = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def fuzz(operation: Any, base_url: str) -> None:
    @FUZZ
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, checks=[not_a_server_error], timeout=30)

    run()


def test_no_operation_answers_a_server_error(server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    failures, fuzzed = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        fuzzed.append(operation.label)
        try:
            fuzz(operation, server.url)
        except Exception as failure:  # collect every operation's failure, not just the first
            failures.append(f"{operation.label}: {failure}")
    assert "POST /v1/checkpoints" in fuzzed and len(fuzzed) > 20, fuzzed
    assert not failures, "\n\n".join(failures)
