"""Connection slots per user on a real Redis and a real Redis Cluster: claims held by
an instance stay claimed for as long as it refreshes them, however many it holds."""

from __future__ import annotations

import asyncio
import secrets

from chat_server.redis_client import RedisClient
from chat_server.user_slots import REFRESH_CHUNK, RedisSlots

WAIT = 30.0


async def test_more_claims_than_one_refresh_pipeline_all_stay_held(
    shared_client: RedisClient,
) -> None:
    """An instance holding more connections than one refresh pipeline carries keeps every
    user's slot past the claims' lifetime: a second connection of each is refused."""
    count = REFRESH_CHUNK + REFRESH_CHUNK // 2
    prefix = f"test-slots-{secrets.token_hex(4)}"
    holder = RedisSlots(shared_client, limit=1, prefix=prefix, ttl=1.5, timeout=5.0)
    other = RedisSlots(shared_client, limit=1, prefix=prefix, ttl=1.5, timeout=5.0)
    users = [f"user-{i}" for i in range(count)]
    try:
        async with asyncio.timeout(WAIT):
            # Refreshing from the start: taking 1,500 claims may itself outlast their
            # lifetime on a busy host (the first ones expired before any refresh).
            await holder.start()
            for user in users:
                assert await holder.take(user, f"conn-{user}")
            await asyncio.sleep(3.0)  # twice the claims' lifetime: only refreshes keep them
            for user in (users[0], users[REFRESH_CHUNK - 1], users[REFRESH_CHUNK], users[-1]):
                assert not await other.take(user, f"second-{user}"), user
    finally:
        async with asyncio.timeout(WAIT):
            await holder.aclose()
            await other.aclose()
