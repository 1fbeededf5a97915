"""Logs at INFO never hold a token, an API key, a secret or a user's message text, whatever
happens: a full scenario (REST, WebSocket, refused tokens, refreshed tokens, malformed
frames, provider failures, a BGG import) is logged as JSON and grepped."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pytest

from chat_server.logs import configure_logging
from tests.bgg_server import FakeBgg
from tests.server import SECRET, RunningServer, make_settings, running_server
from tests.tcp_proxy import TcpProxy
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import ws_client

from .support import bearer, first_game

pytestmark = pytest.mark.faults

# Opaque on purpose: none of them looks like what the redaction filter masks, so only
# not logging them at all keeps them out of the logs.
OPENAI_KEY = "opaque-openai-credential-5f1c9a"
ANTHROPIC_KEY = "opaque-anthropic-credential-77b2e0"
GEMINI_KEY = "opaque-gemini-credential-0d4e61"
BGG_TOKEN = "opaque-bgg-credential-3a8f2c"
QUESTION = "Is the marmalade heron allowed on the desert tile?"
ANSWER_WORDS = ["Quixotic ", "pangolins ", "may ", "nap ", "there."]
ANSWER = "".join(ANSWER_WORDS)


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every log line at INFO and above as JSON, with the process-wide setup restored."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "httpx"]
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


def assert_clean(logged: str, secrets: list[str]) -> None:
    assert logged.strip(), "nothing was logged: the capture is broken"
    for line in logged.splitlines():
        json.loads(line)  # every line is one JSON object
    for secret in secrets:
        assert secret not in logged, f"{secret[:24]}... is in the logs"


async def scenario(server: RunningServer) -> list[str]:
    """Everything a day of traffic does; returns the tokens it used."""
    user, admin = server.token("logged-user"), server.token("logged-admin", "admin")
    expired = server.token("logged-user", ttl=-3600)
    forged = jwt.encode({"sub": "x", "aud": "authenticated", "exp": 2**31}, "wrong" * 10)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        game = await first_game(server.url, user)
        await http.get("/me/sessions", headers=bearer(user))
        assert (await http.get("/games", headers=bearer(expired))).status_code == 401
        assert (await http.get("/games", headers=bearer(forged))).status_code == 401
        imported = await http.post(
            "/admin/games/import", json={"bgg_id": 13}, headers=bearer(admin)
        )
        assert imported.status_code in (200, 201), imported.text
    async with ws_client(server.ws_url, expired, ready=False) as refused:
        await refused.expect("error")
    async with ws_client(server.ws_url, user, auth_frame=True) as client:
        await client.start(game, provider="openai")
        frames = await client.ask(QUESTION)
        assert "".join(f["text"] for f in frames if f["type"] == "turn.delta") == ANSWER
        await client.send({"type": "auth", "token": server.token("logged-user")})
        await client.send({"type": "auth", "token": forged})
        await client.expect("error")
        await client.send({"type": "message", "text": QUESTION, "extra": True})
        await client.expect("error")
        await client.send(QUESTION)  # not JSON
        await client.expect("error")
        await client.send({"type": "message", "text": QUESTION * 200})  # too long
        await client.expect("error")
    return [user, admin, expired, forged]


def secrets_of(tokens: list[str]) -> list[str]:
    signatures = [t.rsplit(".", 1)[1] for t in tokens]
    return [*tokens, *signatures, OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY, BGG_TOKEN, SECRET,
            QUESTION, *ANSWER_WORDS[:2], ANSWER]  # fmt: skip


async def test_a_full_scenario_logs_no_token_key_or_text(
    tmp_path: Path, captured: io.StringIO
) -> None:
    """Tokens (good, expired, forged), API keys, the BGG token, the JWT secret, the
    question and the answer appear nowhere in the INFO logs; provider failures neither."""
    with OpenAIUpstream() as upstream, FakeBgg(token=BGG_TOKEN) as bgg:
        upstream.script = Script(tokens=ANSWER_WORDS)
        settings = make_settings(
            tmp_path,
            log_level="info",
            openai_api_key=OPENAI_KEY,
            openai_base_url=upstream.base_url,
            anthropic_api_key=ANTHROPIC_KEY,
            anthropic_base_url="http://127.0.0.1:9",
            gemini_api_key=GEMINI_KEY,
            gemini_base_url="http://127.0.0.1:9",
            bgg_base_url=bgg.base_url,
            bgg_api_token=BGG_TOKEN,
            provider_first_token_timeout=0.3,
        )
        with running_server(settings) as server:
            tokens = await scenario(server)
            user = tokens[0]
            game = await first_game(server.url, user)
            async with ws_client(server.ws_url, user) as client:
                for provider, script in (
                    ("openai", Script(fail_status=401)),
                    ("openai", Script(fail_status=500)),
                    ("openai", Script(tokens=ANSWER_WORDS, drop_after=2)),
                    ("openai", Script(first_token_delay=1.0)),
                    ("anthropic", Script()),  # connection refused
                    ("gemini", Script()),
                ):
                    upstream.script = script
                    await client.start(game, provider=provider)
                    frames = await client.ask(QUESTION)
                    assert frames[-1]["finish_reason"] == "error"
        assert bgg.requests, "the import did not reach the fake BGG"
    logged = captured.getvalue()
    assert '"turn completed"' in logged  # INFO lines are there
    assert_clean(logged, secrets_of(tokens))


async def test_a_database_failure_logs_no_message_text(
    tmp_path: Path, captured: io.StringIO, postgres_url: str
) -> None:
    """The database goes away while an answer is stored: the error is logged, the
    answer's text is not."""
    parts = urlsplit(postgres_url)
    with (
        OpenAIUpstream() as upstream,
        TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy,
    ):
        upstream.script = Script(tokens=ANSWER_WORDS * 20, token_delay=0.01)
        url = parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{proxy.port}")
        settings = make_settings(
            tmp_path,
            log_level="info",
            database_url=url.geturl(),
            seed_demo=True,
            openai_api_key=OPENAI_KEY,
            openai_base_url=upstream.base_url,
        )
        with running_server(settings) as server:
            user = server.token("logged-user")
            game = await first_game(server.url, user)
            async with ws_client(server.ws_url, user) as client:
                await client.start(game)
                await client.send({"type": "message", "text": QUESTION})
                await client.expect("turn.started")
                await client.expect("turn.delta")
                proxy.cut()
                await client.until("turn.completed")
                proxy.restore()
    logged = captured.getvalue()
    assert "storing the answer failed" in logged
    assert_clean(logged, [QUESTION, ANSWER_WORDS[0], ANSWER_WORDS[1], OPENAI_KEY, user])
