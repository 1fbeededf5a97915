"""The live-session registry on a real Redis and a real Redis Cluster: what one
instance publishes, another lists; a clean shutdown forgets it."""

from __future__ import annotations

import asyncio

from redis.crc import key_slot

from chat_server.redis_client import RedisClient
from chat_server.sessions.registry import RedisRegistry


def snapshot(session_id: str, instance: str) -> dict[str, str]:
    return {"id": session_id, "instance": instance}


async def test_sessions_of_two_instances_are_listed_by_both(shared_client: RedisClient) -> None:
    """Each instance lists the other's sessions (on a cluster too: one MGET)."""
    a = RedisRegistry(shared_client, "a", prefix="reg", flush_interval=0.05)
    b = RedisRegistry(shared_client, "b", prefix="reg", flush_interval=0.05)
    await a.start()
    await b.start()
    expected = {(f"s{n}", "a" if n % 2 else "b") for n in range(20)}
    try:
        for n in range(20):
            owner = a if n % 2 else b
            owner.put(f"s{n}", lambda n=n, owner=owner: snapshot(f"s{n}", owner.instance_id))
        for registry in (a, b):
            listed: set[tuple[str, str]] = set()
            async with asyncio.timeout(5):
                while listed != expected:
                    await asyncio.sleep(0.05)
                    listed = {(s["id"], s["instance"]) for s in await registry.list()}
            assert await registry.live_instances() == {"a", "b"}
    finally:
        await a.aclose()
    listed = await b.list()
    assert {s["instance"] for s in listed} == {"b"}
    assert await b.live_instances() == {"b"}
    await b.aclose()
    assert await b.list() == []


async def test_every_registry_key_is_in_one_cluster_slot(shared_client: RedisClient) -> None:
    """What the registry stores shares one hash slot, so a cluster serves its MGET."""
    registry = RedisRegistry(shared_client, "a", prefix="reg")
    for n in range(50):
        registry.put(f"s{n}", lambda n=n: snapshot(f"s{n}", "a"))
    await registry.start()  # the first, full write
    try:
        keys: list[bytes] = await shared_client.keys("reg:*")
        assert len(keys) == 52  # 50 sessions, their index, the instances
        assert len({key_slot(key) for key in keys}) == 1
    finally:
        await registry.aclose()
