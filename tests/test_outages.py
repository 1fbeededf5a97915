"""Our own backing services going away: turns refused quickly with `unavailable`,
/readyz naming the service, and normal service again without a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.private_redis import private_redis
from tests.redis_cluster import redis_cluster
from tests.server import make_settings, running_server
from tests.wsclient import ws_client


async def test_redis_stopped_mid_run_then_started(tmp_path: Path) -> None:
    """Redis down: the next turn gets `unavailable` within 2 s and /readyz says redis;
    Redis back: turns work again, counted once each."""
    with private_redis(tmp_path) as redis:
        settings = make_settings(tmp_path, redis_url=redis.url, redis_timeout=0.5)
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

                    redis.stop()
                    started = time.monotonic()
                    await client.send({"type": "message", "text": "How do I win?"})
                    error = await client.expect("error")
                    assert error["code"] == "unavailable"
                    assert time.monotonic() - started < 2.0
                    ready = await http.get(f"{server.url}/readyz")
                    assert ready.status_code == 503
                    assert ready.json()["context"]["failed"] == ["redis"]

                    redis.start()  # an empty Redis: it keeps nothing on disk here
                    again = await client.ask("How do I win?")
                    assert again[-1]["finish_reason"] == "stop"
                    assert again[0]["quota"]["used"] == 1
                    ready = await http.get(f"{server.url}/readyz")
                    assert ready.status_code == 200


async def test_redis_cluster_stopped_mid_run_then_started(tmp_path: Path) -> None:
    """The same on a Redis Cluster: every node down gives `unavailable` within 2 s and
    /readyz says redis; the nodes back and turns work again, with no restart."""
    with redis_cluster(tmp_path / "cluster") as nodes:
        settings = make_settings(
            tmp_path, redis_url=nodes.url, redis_cluster=True, redis_timeout=0.5
        )
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

                    nodes.stop()
                    started = time.monotonic()
                    await client.send({"type": "message", "text": "How do I win?"})
                    error = await client.expect("error")
                    assert error["code"] == "unavailable"
                    assert time.monotonic() - started < 2.0
                    ready = await http.get(f"{server.url}/readyz")
                    assert ready.status_code == 503
                    assert ready.json()["context"]["failed"] == ["redis"]

                    nodes.restart()  # the same nodes, empty: nothing is kept on disk
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
