"""Hostile REST input (issue 16): deep nesting, NUL and lone surrogates, long echoes,
script URLs, malformed Last-Event-ID, long subjects, tokens in URLs. Each is refused
with the flat error body, nothing is stored, no traceback is logged, and a read never
fails on what an earlier write let in. On SQLite and on Postgres."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from chat_server.logs import configure_logging
from chat_server.storage.flags import upsert_flag
from tests.http_api.support import backend_settings, bearer, expect_error
from tests.server import RunningServer, running_server

pytestmark = pytest.mark.faults

TIMEOUT = 10.0


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log line at INFO and above as JSON, with the process-wide setup restored."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"]
    saved = [
        (lg, list(lg.handlers), lg.level, lg.propagate)
        for lg in (logging.getLogger(n) for n in names)
    ]
    out = io.StringIO()
    configure_logging("info", json_format=True, stream=out)
    try:
        yield out
    finally:
        configure_logging("warning", json_format=True, stream=io.StringIO())
        for lg, handlers, level, propagate in saved:
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate


@pytest.fixture
def server(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, captured: io.StringIO
) -> Iterator[RunningServer]:
    with running_server(backend_settings(request, tmp_path, backend)) as srv:
        yield srv


@pytest.fixture
def staff(server: RunningServer) -> Iterator[httpx.Client]:
    headers = bearer(server.token("staff-1", role="admin"))
    with httpx.Client(base_url=server.url, headers=headers, timeout=TIMEOUT) as http:
        yield http


# A user flag's body up to its metadata (a user scope: no seeded flag is replaced).
HEAD = '{"feature_key": "chat", "scope_type": "user", "scope_id": "u", "enabled": true, '
HEAD += '"metadata": '


def flag(**metadata: Any) -> dict[str, Any]:
    return {"feature_key": "chat", "scope_type": "global", "enabled": True, "metadata": metadata}


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def logged(captured: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captured.getvalue().splitlines() if line.strip()]


def test_a_body_nested_600_deep_is_422_without_a_traceback(
    staff: httpx.Client, captured: io.StringIO
) -> None:
    """600 levels of JSON: 422 with the flat body, nothing stored, no error logged."""
    headers = {"content-type": "application/json"}
    before = staff.get("/admin/flags").json()["flags"]
    body = HEAD + nested(600) + "}"
    response = staff.put("/admin/flags", content=body, headers=headers)
    expect_error(response, 422, "VALIDATION_ERROR")
    assert "32" in response.json()["detail"]
    assert staff.get("/admin/flags").json()["flags"] == before
    assert not [line for line in logged(captured) if line["level"] in ("ERROR", "CRITICAL")]
    assert "Traceback" not in captured.getvalue()


def test_32_levels_are_accepted_and_33_are_not(staff: httpx.Client) -> None:
    """The limit is 32 levels: the flag body itself is one, its metadata the rest."""
    ok = staff.put("/admin/flags", json=flag(x=json.loads(nested(30))))
    assert ok.status_code in (200, 201), ok.text
    deep = staff.put("/admin/flags", json=flag(x=json.loads(nested(31))))
    expect_error(deep, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "body",
    [
        HEAD + '{"n": "a\\u0000b"}}',
        HEAD + '{"n": "a\\ud800"}}',
        HEAD + '{"\\udfb2": 1}}',
        HEAD + '{"l": ["\\uDBFF x"]}}',
    ],
    ids=["nul", "lone-high", "lone-low-key", "in-a-list"],
)
def test_nul_and_lone_surrogates_anywhere_in_a_body_are_422_and_nothing_is_stored(
    staff: httpx.Client, body: str
) -> None:
    """In a value, a key or a list: 422 with the flat body, and the flag is not stored."""
    before = staff.get("/admin/flags").json()["flags"]
    response = staff.put("/admin/flags", content=body, headers={"content-type": "application/json"})
    expect_error(response, 422, "VALIDATION_ERROR")
    assert staff.get("/admin/flags").json()["flags"] == before


def test_a_surrogate_pair_in_a_body_is_fine(staff: httpx.Client) -> None:
    """``\\ud83c\\udfb2`` is one character (🎲), not a lone surrogate: stored and read back."""
    body = HEAD + '{"n": "\\ud83c\\udfb2"}}'
    response = staff.put("/admin/flags", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (200, 201), response.text
    flags = staff.get("/admin/flags").json()["flags"]
    assert [f["metadata"] for f in flags if f["scope_id"] == "u"] == [{"n": "🎲"}]


def test_a_stored_lone_surrogate_never_fails_a_read(
    server: RunningServer, staff: httpx.Client
) -> None:
    """A flag whose metadata holds a lone surrogate (written before the rule): the list
    answers 200, the surrogate as U+FFFD."""
    server.call(
        upsert_flag(
            server.services.db,
            feature_key="chat",
            scope_type="user",
            scope_id="stored-earlier",
            role=None,
            environment="dev",
            enabled=True,
            metadata={"note": "a\ud800b"},
        )
    )
    response = staff.get("/admin/flags")
    assert response.status_code == 200, response.text
    flags = response.json()["flags"]
    assert [f["metadata"] for f in flags if f["scope_id"] == "stored-earlier"] == [
        {"note": "a\ufffdb"}
    ]


def test_every_response_says_nosniff(server: RunningServer, staff: httpx.Client) -> None:
    """200, 401, 404, 413, 422 and the admin page all carry X-Content-Type-Options."""
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as anonymous:
        responses = [
            anonymous.get("/healthz"),
            anonymous.get("/games"),
            staff.get("/games"),
            staff.get("/games/nope"),
            staff.put(
                "/admin/flags", content=nested(40), headers={"content-type": "application/json"}
            ),
            staff.post("/admin/games", content=b"x" * (5 * 1024 * 1024)),
            anonymous.get("/admin"),
        ]
    statuses = {r.status_code for r in responses}
    assert {200, 401, 404, 413, 422} <= statuses
    for response in responses:
        assert response.headers.get("x-content-type-options") == "nosniff", response.url


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JAVASCRIPT:alert(1)",
        "data:text/html,<script>",
        "//evil.example/x",
        "ftp://x/y",
    ],
)
def test_game_urls_other_than_http_are_refused(staff: httpx.Client, url: str) -> None:
    """thumbnail_url and image_url take http(s) URLs only: anything else is 422."""
    for name in ("thumbnail_url", "image_url"):
        response = staff.post("/admin/games", json={"name": "Evil", name: url})
        expect_error(response, 422, "VALIDATION_ERROR")


def test_game_urls_over_http_are_kept(staff: httpx.Client) -> None:
    """https and http URLs (any case of the scheme) are stored and shown as given."""
    created = staff.post(
        "/admin/games",
        json={
            "name": "Fine",
            "thumbnail_url": "HTTPS://img.example/t.png",
            "image_url": "http://img.example/i.png",
        },
    )
    assert created.status_code == 201, created.text
    game = created.json()
    assert (game["thumbnail_url"], game["image_url"]) == (
        "HTTPS://img.example/t.png",
        "http://img.example/i.png",
    )


def test_a_60_kb_unknown_key_is_not_echoed_whole(staff: httpx.Client) -> None:
    """An unknown key of 60,000 characters: 422 whose body echoes at most 200 of them."""
    key = "k" * 60_000
    response = staff.post("/admin/games", json={"name": "x", key: 1})
    body = expect_error(response, 422, "VALIDATION_ERROR")
    assert len(response.content) < 2_000
    assert len(body["detail"]) <= 400


def test_10000_unknown_keys_are_not_echoed_10000_times(staff: httpx.Client) -> None:
    """A body of 10,000 unknown keys: a 422 of a few errors, not one per key."""
    response = staff.post("/admin/games", json={"name": "x", **{f"k{i}": i for i in range(10_000)}})
    body = expect_error(response, 422, "VALIDATION_ERROR")
    assert len(body["context"]["errors"]) <= 10


@pytest.mark.parametrize("value", ["abc", "1-2-3", "-1", "1:2", "9" * 30, "1 2", "0x10"])
def test_a_malformed_last_event_id_is_400(staff: httpx.Client, value: str) -> None:
    """The admin feed with a Last-Event-ID that is no id of its own: 400, flat body."""
    response = staff.get("/admin/sessions/events", headers={"last-event-id": value})
    expect_error(response, 400, "BAD_REQUEST")


@pytest.mark.parametrize("value", ["abc", "turn:", ":5", "turn:x", "turn:-1", "turn:" + "9" * 30])
def test_a_malformed_last_event_id_on_a_session_watch_is_400(
    staff: httpx.Client, value: str
) -> None:
    """Watching one session with a Last-Event-ID that is not <turn_id>:<seq>: 400."""
    response = staff.get("/admin/sessions/any-session/stream", headers={"last-event-id": value})
    expect_error(response, 400, "BAD_REQUEST")


def test_a_well_formed_last_event_id_streams(staff: httpx.Client) -> None:
    """A counter id (or a Redis Stream id) starts the stream."""
    with staff.stream("GET", "/admin/sessions/events", headers={"last-event-id": "0"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert next(r.iter_text()).startswith("retry:")


def test_a_subject_over_64_characters_is_401(server: RunningServer) -> None:
    """sub of 65 characters: 401 unauthorized; of 64: accepted."""
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        expect_error(
            http.get("/games", headers=bearer(server.token("u" * 65))), 401, "UNAUTHORIZED"
        )
        assert http.get("/games", headers=bearer(server.token("u" * 64))).status_code == 200


def test_a_token_in_the_url_is_refused_and_never_logged(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, captured: io.StringIO
) -> None:
    """?token= (plain, with %2E for its dots, or encoded twice) is not accepted (401) and
    the access log holds none of its signature."""
    with running_server(backend_settings(request, tmp_path, backend)) as server:
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)  # the test server's is WARNING
        token = server.token("url-user")
        signature = token.rsplit(".", 1)[1]
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
            for shown in (token, token.replace(".", "%2E"), quote(quote(token, safe=""), safe="")):
                response = http.get(f"/games?token={shown}")
                expect_error(response, 401, "UNAUTHORIZED")
    text = captured.getvalue()
    assert text.count("GET /games?token=") == 3  # the access log did log those requests
    for part in (signature, signature[:20], quote(signature[:20], safe="")):
        assert part not in text
