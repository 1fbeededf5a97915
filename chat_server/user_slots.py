"""Connections per user across every instance (``WS_MAX_CONNECTIONS_PER_USER``).

- ``MemorySlots`` (one instance): a count per user.
- ``RedisSlots``: a sorted set per user, ``{prefix}:conns:{<user_id>}``, of connection
  ids scored by when their claim expires. Taking a slot is one Lua script (drop expired
  claims, refuse at the limit, add); the instance refreshes its claims every
  ``ttl / 3`` seconds in pipelines of ``REFRESH_CHUNK``, so a killed instance's
  connections stop counting within ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from .errors import Unavailable
from .redis_client import REDIS_ERRORS, RedisClient

__all__ = ["MemorySlots", "RedisSlots", "UserSlots"]

log = logging.getLogger(__name__)

#: Claims refreshed per pipeline (see ``RedisSlots._refresh``).
REFRESH_CHUNK = 1000

_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


class UserSlots(Protocol):
    async def take(self, user_id: str, connection_id: str) -> bool:
        """Claim a slot for this connection; False when the user has ``limit`` already."""
        ...

    async def release(self, user_id: str, connection_id: str) -> None: ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class MemorySlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, set[str]] = {}

    async def take(self, user_id: str, connection_id: str) -> bool:
        mine = self._held.setdefault(user_id, set())
        if connection_id not in mine and len(mine) >= self.limit:
            return False
        mine.add(connection_id)
        return True

    async def release(self, user_id: str, connection_id: str) -> None:
        mine = self._held.get(user_id)
        if mine is not None:
            mine.discard(connection_id)
            if not mine:
                del self._held[user_id]

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RedisSlots:
    def __init__(
        self,
        redis: RedisClient,
        limit: int,
        *,
        prefix: str = "chat",
        ttl: float = 60.0,
        timeout: float = 1.0,
    ) -> None:
        self.limit = limit
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl
        self._timeout = timeout
        self._script = redis.register_script(_TAKE)
        self._held: dict[str, str] = {}  # connection id -> user id
        self._task: asyncio.Task[None] | None = None

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}:conns:{{{user_id}}}"

    async def take(self, user_id: str, connection_id: str) -> bool:
        now = time.time()
        try:
            async with asyncio.timeout(self._timeout):
                granted = await self._script(
                    keys=[self._key(user_id)],
                    args=[now, now + self._ttl, connection_id, self.limit, int(self._ttl * 1000)],
                )
        except REDIS_ERRORS as exc:
            raise Unavailable("Redis is unavailable", context={"service": "redis"}) from exc
        if granted:
            self._held[connection_id] = user_id
        return bool(granted)

    async def release(self, user_id: str, connection_id: str) -> None:
        self._held.pop(connection_id, None)
        with contextlib.suppress(*REDIS_ERRORS):
            async with asyncio.timeout(self._timeout):
                await self._redis.zrem(self._key(user_id), connection_id)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._refresh(), name="user-slots-refresh")

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            held = list(self._held.items())
            expires = time.time() + self._ttl
            # In pipelines of REFRESH_CHUNK claims: one pipeline for every claim would
            # hold the loop while it is built and read (a second at 50,000 connections)
            # and need far longer than one call's deadline.
            for start in range(0, len(held), REFRESH_CHUNK):
                pipe = self._redis.pipeline(transaction=False)
                keys: set[str] = set()
                for connection_id, user_id in held[start : start + REFRESH_CHUNK]:
                    key = self._key(user_id)
                    pipe.zadd(key, {connection_id: expires}, xx=True)
                    keys.add(key)
                for key in keys:
                    pipe.pexpire(key, int(self._ttl * 1000))
                try:
                    async with asyncio.timeout(self._timeout * 3):
                        await pipe.execute()
                except REDIS_ERRORS as exc:
                    log.warning("user slots: refresh failed (%s)", type(exc).__name__)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for connection_id, user_id in list(self._held.items()):
            await self.release(user_id, connection_id)
