"""Our own backing services going away: turns refused quickly with `unavailable`,
/readyz naming the service, and normal service again without a restart."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.support import first_game
from tests.private_redis import private_redis
from tests.redis_cluster import redis_cluster
from tests.server import make_settings, running_server
from tests.wsclient import ws_client


@contextmanager
def redis_to_stop(
    kind: str, workdir: Path
) -> Iterator[tuple[dict[str, Any], Callable[[], None], Callable[[], None]]]:
    """A Redis of our own (a single server or a three-primary cluster): the settings
    that reach it, how to stop it, and how to start it again (empty)."""
    if kind == "redis":
        with private_redis(workdir) as redis:
            yield {"redis_url": redis.url}, redis.stop, redis.start
    else:
        with redis_cluster(workdir / "cluster") as nodes:
            yield {"redis_url": nodes.url, "redis_cluster": True}, nodes.stop, nodes.restart


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
async def test_redis_stopped_mid_run_then_started(tmp_path: Path, kind: str) -> None:
    """Redis (or every node of a Redis Cluster) down: the next turn gets `unavailable`
    within 2 s and /readyz says redis; Redis back: turns work again, counted once each,
    with no restart."""
    with redis_to_stop(kind, tmp_path) as (reach, stop, start):
        settings = make_settings(tmp_path, redis_timeout=0.5, **reach)
        with running_server(settings) as server:
            token = server.token("alice")
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(timeout=5) as http:
                games = (await http.get(f"{server.url}/games", headers=headers)).json()
                game = games["games"][0]["id"]
                async with ws_client(server.ws_url, token) as client:
                    await client.start(game)
                    first = await client.ask("How do I win?")
                    assert first[0]["quota"]["used"] == 1

                    stop()
                    started = time.monotonic()
                    await client.send({"type": "message", "text": "How do I win?"})
                    error = await client.expect("error")
                    assert error["code"] == "unavailable"
                    assert time.monotonic() - started < 2.0
                    ready = await http.get(f"{server.url}/readyz")
                    assert ready.status_code == 503
                    assert ready.json()["context"]["failed"] == ["redis"]

                    start()  # empty: nothing is kept on disk here
                    deadline = time.monotonic() + 15
                    while (await http.get(f"{server.url}/readyz")).status_code != 200:
                        assert time.monotonic() < deadline, "never ready again"
                        await asyncio.sleep(0.2)
                    again = await client.ask("How do I win?")
                    assert again[-1]["finish_reason"] == "stop"
                    assert again[0]["quota"]["used"] == 1


async def test_quota_fail_open_serves_uncounted_turns_while_redis_is_down(
    tmp_path: Path,
) -> None:
    """With QUOTA_FAIL_OPEN, a turn still streams when Redis is down (uncounted)."""
    with private_redis(tmp_path) as redis:
        settings = make_settings(
            tmp_path, redis_url=redis.url, redis_timeout=0.5, quota_fail_open=True
        )
        with running_server(settings) as server:
            token = server.token("alice")
            async with httpx.AsyncClient(timeout=5) as http:
                games = (
                    await http.get(
                        f"{server.url}/games", headers={"Authorization": f"Bearer {token}"}
                    )
                ).json()
            async with ws_client(server.ws_url, token) as client:
                await client.start(games["games"][0]["id"])
                redis.stop()
                frames = await client.ask("How do I win?")
    assert frames[-1]["finish_reason"] == "stop"
    assert frames[0]["quota"]["used"] == 0


async def test_a_rulebook_search_that_fails_refuses_the_message_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    """The rulebook search fails (here the SQLite full-text index is gone): the
    message gets `unavailable` and no turn; nothing is stored, the quota is given
    back, the connection and the server go on."""
    with running_server(make_settings(tmp_path)) as server:
        token = server.token("alice")
        game = await first_game(server.url, token)
        async with ws_client(server.ws_url, token) as client:
            session = (await client.start(game))["session"]["id"]
            first = await client.ask("How do I win?")
            assert first[0]["quota"]["used"] == 1

            with sqlite3.connect(tmp_path / "chat.db") as db:
                db.execute("DROP TABLE document_passages_fts")
            await client.send({"type": "message", "text": "How do I build a city?"})
            error = await client.expect("error")
            assert error["code"] == "unavailable"
            await client.send({"type": "ping", "id": "still-there"})
            assert await client.expect("pong") == {"type": "pong", "id": "still-there"}

        async with ws_client(server.ws_url, token) as client:
            await client.send({"type": "session.resume", "session_id": session})
            ready = await client.expect("session.ready")
            contents = [m["content"] for m in ready["history"]]
            assert "How do I win?" in contents
            assert "How do I build a city?" not in contents
            assert ready["quota"]["used"] == 1
