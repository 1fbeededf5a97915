"""The server killed with SIGKILL mid-turn, then started again: nothing the user said is
lost, every stored answer has a final status, and the quota of a turn that never streamed
is given back (embedded: in-process counts start empty; Redis: the orphan sweep refunds)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from chat_server.auth import mint_token
from chat_server.quotas import next_midnight
from chat_server.storage import Database
from chat_server.storage.schema import chat_messages
from tests.private_redis import private_redis
from tests.processes import ServerProcess, server_process
from tests.server import SECRET
from tests.upstreams import OpenAIUpstream, RecordedRequest, Script
from tests.wsclient import Client, ws_client

from .support import bearer, first_game

pytestmark = pytest.mark.faults

FINAL = {"complete", "cancelled", "error"}
SCRIPTS = {
    "[done]": Script(tokens=["Roll ", "the ", "dice."]),
    "[never]": Script(first_token_delay=60.0),  # killed before its first token
    "[midway]": Script(tokens=[f"w{i} " for i in range(2000)], token_delay=0.01),
}


class KillUpstream(OpenAIUpstream):
    """The script is chosen by the marker in the question."""

    async def _respond(self, conn: Any, req: RecordedRequest) -> bool:
        messages = req.body.get("messages", []) if isinstance(req.body, dict) else []
        last = json.dumps(messages[-1:])
        for mark, script in SCRIPTS.items():
            if mark in last:
                self.script = script  # read by the base class before its first await
        return await super()._respond(conn, req)


@pytest.fixture
def upstream() -> Iterator[KillUpstream]:
    with KillUpstream() as up:
        yield up


def token(user: str, role: str = "basic") -> str:
    return mint_token(secret=SECRET, user_id=user, role=role)


def env_for(upstream: KillUpstream, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": upstream.base_url,
        "PROVIDER_FIRST_TOKEN_TIMEOUT": "120",
        "WS_RESUME_GRACE": "30",
        **extra,
    }


async def interrupted_turns(server: ServerProcess) -> dict[str, Any]:
    """Alice finishes one turn then waits for a first token that never comes; Bob is
    midway through an answer. Then the process is killed. Returns what they saw."""
    game = await first_game(server.url, token("alice"), name="Catan")
    seen: dict[str, Any] = {}
    async with (
        ws_client(server.ws_url, token("alice")) as alice,
        ws_client(server.ws_url, token("bob")) as bob,
    ):
        seen["alice_session"] = (await alice.start(game))["session"]["id"]
        seen["bob_session"] = (await bob.start(game))["session"]["id"]
        done = await alice.ask("How do I build a road? [done]")
        assert done[-1]["finish_reason"] == "stop"
        seen["done_turn"] = done[0]["turn_id"]
        seen["never_turn"] = await _start(alice, "What does the robber do? [never]", delta=False)
        seen["midway_turn"] = await _start(bob, "How do I trade? [midway]", delta=True)
        seen["game"] = game
        server.signal(signal.SIGKILL)
        assert server.wait(5) == -signal.SIGKILL
        assert await bob.closed(timeout=5) in (None, 1006)
    return seen


async def _start(client: Client, text: str, *, delta: bool) -> str:
    await client.send({"type": "message", "text": text})
    started = await client.expect("turn.started")
    if delta:
        await client.expect("turn.delta")
    else:
        await asyncio.sleep(0.3)  # the upstream request is out; no token will come
    return str(started["turn_id"])


async def session_messages(url: str, user: str, session_id: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{url}/me/sessions/{session_id}", headers=bearer(token(user)))
    response.raise_for_status()
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def usage(url: str, user: str, game: str) -> int:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(
            f"{url}/me/usage", params={"game_id": game}, headers=bearer(token(user))
        )
    response.raise_for_status()
    quota = next(q for q in response.json()["quotas"] if q["feature"] == "chat")
    return int(quota["used"])


async def streaming_left(database_url: str) -> list[str]:
    """Every stored message still ``streaming``, across all users (read directly)."""
    db = Database(database_url)
    try:
        async with db.read() as conn:
            rows = (
                await conn.execute(
                    select(chat_messages.c.id).where(chat_messages.c.status == "streaming")
                )
            ).all()
    finally:
        await db.dispose()
    return [r[0] for r in rows]


def check_history(
    alice: list[dict[str, Any]], bob: list[dict[str, Any]], seen: dict[str, Any]
) -> None:
    assert {m["status"] for m in alice + bob} <= FINAL
    asked = [m["content"] for m in alice if m["role"] == "user"]
    assert asked == ["How do I build a road? [done]", "What does the robber do? [never]"]
    assert [m["content"] for m in bob if m["role"] == "user"] == ["How do I trade? [midway]"]
    by_turn = {(m["turn_id"], m["role"]): m for m in alice + bob}
    assert by_turn[(seen["done_turn"], "assistant")]["status"] == "complete"
    never = by_turn[(seen["never_turn"], "assistant")]
    assert (never["status"], never["content"]) == ("error", "")
    midway = by_turn[(seen["midway_turn"], "assistant")]
    assert (midway["status"], midway["content"]) == ("error", "")  # its text was never written


async def test_sigkill_on_the_embedded_default_then_restart(
    tmp_path: Path, upstream: KillUpstream
) -> None:
    """Embedded SQLite: after SIGKILL and a restart every message has a final status,
    both questions are there, and in-process quota counts start again from zero."""
    with server_process(env_for(upstream), tmp_path) as first:
        seen = await interrupted_turns(first)
    with server_process(env_for(upstream), tmp_path) as second:
        alice = await session_messages(second.url, "alice", seen["alice_session"])
        bob = await session_messages(second.url, "bob", seen["bob_session"])
        check_history(alice, bob, seen)
        # In-process counters live and die with the process: the killed turn's place,
        # like every place of the day, is given back.
        assert await usage(second.url, "alice", seen["game"]) == 0
    assert await streaming_left(f"sqlite:///{tmp_path / 'chat.db'}") == []


async def test_sigkill_on_postgres_and_redis_then_restart(
    tmp_path: Path, upstream: KillUpstream, postgres_url: str
) -> None:
    """Postgres and Redis: the new instance's orphan sweep gives the dead instance's
    answers a final status and gives back the place of the turn that never streamed; a
    day's count expires by itself an hour after the next UTC midnight."""
    with private_redis(tmp_path) as redis:
        env = env_for(
            upstream,
            DATABASE_URL=postgres_url,
            REDIS_URL=redis.url,
            SEED_DEMO="true",
            REGISTRY_TTL="1",
            REGISTRY_HEARTBEAT="0.3",
            ORPHAN_SWEEP_INTERVAL="0.5",
        )
        with server_process(env, tmp_path) as first:
            seen = await interrupted_turns(first)
        with server_process(env, tmp_path) as second:
            for _ in range(80):  # the sweep runs every 0.5 s on answers older than 6 s
                if not await streaming_left(postgres_url):
                    break
                await asyncio.sleep(0.25)
            assert await streaming_left(postgres_url) == []
            alice = await session_messages(second.url, "alice", seen["alice_session"])
            bob = await session_messages(second.url, "bob", seen["bob_session"])
            check_history(alice, bob, seen)
            assert await usage(second.url, "alice", seen["game"]) == 1  # the finished turn

        client = Redis.from_url(redis.url, socket_timeout=2)
        try:
            keys = await client.keys("chat:quota:{alice}:*")
            assert len(keys) == 1
            members = {
                m.decode() if isinstance(m, bytes) else m for m in await client.smembers(keys[0])
            }
            ttl = await client.ttl(keys[0])
        finally:
            await client.aclose()
    assert members == {seen["done_turn"]}
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=ttl)
    assert next_midnight(now) < expires <= next_midnight(now) + timedelta(hours=1, seconds=5)
