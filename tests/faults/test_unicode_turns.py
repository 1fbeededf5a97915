"""Whatever a provider sends, the client gets valid text in deltas of at most
WS_MAX_DELTA_CHARS and the answer is stored, on SQLite and on Postgres; a non-stream
answer is provider_error; the socket and session stay usable after each."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text as sql_text

from tests.http_api.support import backend_settings
from tests.server import RunningServer, running_server
from tests.test_ws_providers import catan, history, text_of
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import ws_client

from .support import open_chat

pytestmark = pytest.mark.faults

MAX_DELTA = 1000


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream() as upstream:
        yield upstream


@pytest.fixture
def server(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, upstream: OpenAIUpstream
) -> Iterator[RunningServer]:
    settings = backend_settings(
        request,
        tmp_path,
        backend,
        openai_api_key="sk-test",
        openai_base_url=upstream.base_url,
        default_provider="openai",
        ws_max_delta_chars=MAX_DELTA,
        ws_max_frames_per_second=1000,
        ws_frame_burst=1000,
        provider_first_token_timeout=5.0,
        provider_idle_timeout=5.0,
    )
    with running_server(settings) as srv:
        srv.call(open_chat(srv.url, srv.token(role="admin")))
        yield srv


async def turn_and_next(
    server: RunningServer, upstream: OpenAIUpstream, script: Script
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """One turn on ``script``, then a healthy one on the same socket and session; the
    frames of both and the session's stored history."""
    upstream.script = script
    async with ws_client(server.ws_url, server.token()) as client:
        session_id = (await client.start(catan(server)))["session"]["id"]
        first = await client.ask("What happens when a seven is rolled?")
        upstream.script = Script(tokens=["fine"])
        second = await client.ask("And then?")
        stored = await history(client, session_id)
    return first, second, stored


async def test_split_and_lone_surrogates_reach_the_client_and_the_store_as_valid_text(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """A pair split across events is joined, lone ones are U+FFFD: in the deltas, in the
    stored answer, and the next turn on that socket works."""
    script = Script(tokens=["Dice ", "\ud83c", "\udfb2", " and ", "\udfb2", "\x00", "!"])
    first, second, stored = await turn_and_next(server, upstream, script)
    expected = "Dice 🎲 and \ufffd\ufffd!"
    assert text_of(first) == expected
    assert first[-1]["finish_reason"] == "stop"
    assert text_of(second) == "fine" and second[-1]["finish_reason"] == "stop"
    answers = [m for m in stored if m["role"] == "assistant"]
    assert [(m["content"], m["status"]) for m in answers] == [
        (expected, "complete"),
        ("fine", "complete"),
    ]


async def test_a_one_megabyte_event_goes_out_in_deltas_of_at_most_the_limit(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """A 1 MB upstream event: deltas of at most WS_MAX_DELTA_CHARS, each its own seq,
    together the whole text, which is stored whole."""
    big = "".join(chr(0x41 + i % 26) for i in range(1_000_000))
    first, second, stored = await turn_and_next(server, upstream, Script(tokens=[big, "."]))
    deltas = [f for f in first if f["type"] == "turn.delta"]
    assert max(len(d["text"]) for d in deltas) <= MAX_DELTA
    assert len(deltas) >= 1_000_000 // MAX_DELTA
    assert text_of(first) == big + "."  # seq 1, 2, 3 ... without a gap
    assert text_of(second) == "fine"
    assert next(m["content"] for m in stored if m["role"] == "assistant") == big + "."


async def test_a_json_answer_is_provider_error_and_the_session_goes_on(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """A JSON body to a stream request: an error frame provider_error that says it was
    not an event stream, the turn ends with error, the next turn works."""
    script = Script(plain_answer=("application/json", b'{"choices": []}'))
    first, second, stored = await turn_and_next(server, upstream, script)
    error = next(f for f in first if f["type"] == "error")
    assert error["code"] == "provider_error"
    assert "not an event stream" in error["message"]
    assert first[-1]["finish_reason"] == "error"
    assert text_of(second) == "fine"
    statuses = [m["status"] for m in stored if m["role"] == "assistant"]
    assert statuses == ["error", "complete"]


async def poison(db: Any) -> None:
    """A trigger that refuses to store an answer holding POISON (a store that fails for
    a reason other than the database being away)."""
    if db.is_postgres:
        statements = [
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF NEW.content LIKE '%POISON%' THEN RAISE EXCEPTION 'poisoned'; END IF; "
            "RETURN NEW; END $$",
            "CREATE TRIGGER refuse_poison BEFORE UPDATE ON chat_messages "
            "FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        ]
    else:
        statements = [
            "CREATE TRIGGER refuse_poison BEFORE UPDATE ON chat_messages "
            "WHEN NEW.content LIKE '%POISON%' BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        ]
    async with db.write() as conn:
        for statement in statements:
            await conn.execute(sql_text(statement))


async def test_an_answer_the_store_refuses_ends_as_an_error_not_streaming(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """The store refuses the answer (not an outage): the client has its turn, the
    answer is stored as an error within a second, and the socket goes on."""
    server.call(poison(server.services.db))
    upstream.script = Script(tokens=["a ", "POISON ", "answer"])
    async with ws_client(server.ws_url, server.token()) as client:
        session_id = (await client.start(catan(server)))["session"]["id"]
        first = await client.ask("What happens when a seven is rolled?")
        assert first[-1]["finish_reason"] == "stop"
        stored: list[dict[str, Any]] = []
        for _ in range(50):
            stored = [m for m in await history(client, session_id) if m["role"] == "assistant"]
            if stored and stored[0]["status"] != "streaming":
                break
            await asyncio.sleep(0.05)
        assert [(m["content"], m["status"]) for m in stored] == [("", "error")]
        upstream.script = Script(tokens=["fine"])
        assert text_of(await client.ask("And then?")) == "fine"
