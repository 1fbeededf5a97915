"""Schemathesis over ``/openapi.json`` with valid staff and user tokens: positive and
negative requests to every operation get no 5xx, every status and body is the documented
one, and the server stays ready."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.bgg_server import FakeBgg
from tests.server import RunningServer, make_settings, running_server

from .support import bearer, scaled

pytestmark = pytest.mark.faults

EXAMPLES = scaled(300, minimum=20)  # per role and generation mode
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with FakeBgg() as bgg:
        settings_ = make_settings(
            tmp_path_factory.mktemp("openapi"),
            bgg_base_url=bgg.base_url,
            bgg_max_wait=0.5,
            http_max_body_bytes=100_000,
        )
        with running_server(settings_) as srv:
            yield srv


@pytest.fixture(scope="module")
def schema(server: RunningServer) -> schemathesis.BaseSchema:
    loaded = schemathesis.openapi.from_url(f"{server.url}/openapi.json", timeout=10)
    # An endless Server-Sent Events stream: tested by tests/test_cluster.py.
    return loaded.exclude(path="/admin/sessions/events")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("role", ["developer", "basic"])
def test_schema_driven_requests_find_no_5xx_and_no_surprise(
    server: RunningServer, schema: schemathesis.BaseSchema, role: str, mode: GenerationMode
) -> None:
    """Generated requests as staff or user, valid and invalid: never a 5xx, only
    documented statuses, content types and bodies."""
    headers = bearer(server.token(f"fuzz-{role}", role))
    started = time.monotonic()
    with requests.Session() as session:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=schema.as_strategy(generation_mode=mode))
        def one_request(case: schemathesis.Case) -> None:
            response = case.call(base_url=server.url, session=session, headers=headers, timeout=10)
            STATUSES[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=headers)

        one_request()
    ready = httpx.get(f"{server.url}/readyz", timeout=10)
    assert ready.status_code == 200
    fives = sum(n for status, n in STATUSES.items() if status >= 500)
    print(
        f"\nschemathesis {role} {mode.value}: {EXAMPLES} examples in "
        f"{time.monotonic() - started:.1f} s; statuses so far {dict(sorted(STATUSES.items()))}; "
        f"5xx {fives}"
    )
    assert fives == 0


def test_the_schema_covers_every_route(schema: schemathesis.BaseSchema) -> None:
    """The fuzzer sees every REST operation but the event stream (no route is skipped)."""
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "an operation's schema could not be read"
    paths = {op.path for op in operations}
    assert {"/games", "/games/{game_id}", "/me/sessions/{session_id}", "/admin/flags"} <= paths
    assert len(operations) >= 15
