"""The live-session registry: which sessions are attached where, on every instance.

Each instance keeps its own entries in memory (a snapshot function per attached
connection) and publishes them:

- ``MemoryRegistry`` (one instance): listing reads the local snapshots directly.
- ``RedisRegistry``: every ``flush_interval`` the entries that changed, and every
  ``heartbeat_interval`` all of them, are written in one pipeline as
  ``{prefix}:{live}:{session_id}@{instance}`` (JSON, TTL ``ttl``: a session followed
  from several instances has an entry from each) and indexed in the sorted set
  ``{prefix}:{live}`` scored by their expiry time; the instance itself is kept alive in
  ``{prefix}:{live}:instances`` the same way. The ``{live}`` hash tag puts every
  registry key in one slot of a Redis Cluster, so the listing's ``MGET`` and the
  flush pipeline stay single-slot. A killed instance stops refreshing: its
  sessions leave the listing within ``ttl`` seconds (15 by default), and its
  half-finished answers are given a final status by ``sweep_orphans`` on the
  instances that remain.

``list()`` gives one row per session: the entries of a session on several instances
are merged (``connections`` and ``turns`` added up, the streaming one's turn shown).

Nothing here is on the per-token path: writes are batched by a background task, at
most one pipeline per ``flush_interval``; a Redis outage only delays the listing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import Unavailable
from ..redis_client import REDIS_ERRORS, RedisClient

__all__ = ["MemoryRegistry", "RedisRegistry", "Registry", "Snapshot"]

log = logging.getLogger(__name__)
Snapshot = Callable[[], dict[str, Any]]


class Registry(Protocol):
    instance_id: str

    def put(self, session_id: str, snapshot: Snapshot) -> None:
        """Publish (or refresh) a live session; never waits."""
        ...

    def touch(self, session_id: str) -> None:
        """The session changed: publish it soon."""
        ...

    def remove(self, session_id: str, snapshot: Snapshot | None = None) -> None: ...

    async def list(self) -> list[dict[str, Any]]:
        """Live sessions on every instance."""
        ...

    async def live_instances(self) -> set[str] | None:
        """Instances alive now (None: unknown, e.g. Redis down)."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


class MemoryRegistry:
    """One instance: the registry is this process's own entries."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._entries: dict[str, Snapshot] = {}

    def put(self, session_id: str, snapshot: Snapshot) -> None:
        self._entries[session_id] = snapshot

    def touch(self, session_id: str) -> None:
        return None

    def remove(self, session_id: str, snapshot: Snapshot | None = None) -> None:
        if snapshot is None or self._entries.get(session_id) == snapshot:
            self._entries.pop(session_id, None)

    async def list(self) -> list[dict[str, Any]]:
        return merge_rows([snap() for snap in list(self._entries.values())])

    async def live_instances(self) -> set[str] | None:
        return {self.instance_id}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()


class RedisRegistry:
    """Entries in Redis with a TTL, refreshed by a heartbeat; see the module docstring."""

    def __init__(
        self,
        redis: RedisClient,
        instance_id: str,
        *,
        prefix: str = "chat",
        ttl: float = 15.0,
        heartbeat_interval: float = 5.0,
        flush_interval: float = 0.2,
        timeout: float = 1.0,
    ) -> None:
        self.instance_id = instance_id
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl
        self._heartbeat = heartbeat_interval
        self._flush_interval = flush_interval
        self._timeout = timeout
        self._entries: dict[str, Snapshot] = {}
        self._dirty: set[str] = set()
        self._removed: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_full = 0.0

    @property
    def _index(self) -> str:
        return f"{self._prefix}:{{live}}"

    def _key(self, session_id: str) -> str:
        """This instance's entry of the session (the index holds the part after ``{live}:``)."""
        return f"{self._prefix}:{{live}}:{session_id}@{self.instance_id}"

    def _member(self, session_id: str) -> str:
        return f"{session_id}@{self.instance_id}"

    @property
    def _instances(self) -> str:
        return f"{self._prefix}:{{live}}:instances"

    def put(self, session_id: str, snapshot: Snapshot) -> None:
        self._entries[session_id] = snapshot
        self._removed.discard(session_id)
        self.touch(session_id)

    def touch(self, session_id: str) -> None:
        self._dirty.add(session_id)
        self._wake.set()

    def remove(self, session_id: str, snapshot: Snapshot | None = None) -> None:
        if snapshot is not None and self._entries.get(session_id) != snapshot:
            return
        self._entries.pop(session_id, None)
        self._dirty.discard(session_id)
        self._removed.add(session_id)
        self._wake.set()

    async def list(self) -> list[dict[str, Any]]:
        now = time.time()
        try:
            async with asyncio.timeout(self._timeout * 3):
                ids: Any = await self._redis.zrangebyscore(self._index, now, "+inf")
                if not ids:
                    return []
                keys = [f"{self._prefix}:{{live}}:{_text(i)}" for i in ids]
                values = await self._redis.mget(keys)
        except REDIS_ERRORS as exc:
            raise Unavailable("Redis is unavailable", context={"service": "redis"}) from exc
        return merge_rows([json.loads(v) for v in values if v])

    async def live_instances(self) -> set[str] | None:
        try:
            async with asyncio.timeout(self._timeout):
                ids: Any = await self._redis.zrangebyscore(self._instances, time.time(), "+inf")
        except REDIS_ERRORS:
            return None
        return {_text(i) for i in ids}

    async def start(self) -> None:
        if self._task is None:
            try:
                await self._flush(full=True)
            except REDIS_ERRORS as exc:
                # Start anyway: /readyz names Redis, and the flusher catches up later.
                log.warning("registry: Redis unreachable at start (%s)", type(exc).__name__)
            self._task = asyncio.create_task(self._run(), name="registry-flusher")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._heartbeat):
                    await self._wake.wait()
            self._wake.clear()
            full = time.monotonic() - self._last_full >= self._heartbeat
            try:
                await self._flush(full=full)
            except REDIS_ERRORS as exc:
                log.warning("registry: Redis write failed (%s); will retry", type(exc).__name__)
                self._dirty.update(self._entries)
            await asyncio.sleep(self._flush_interval)

    async def _flush(self, *, full: bool) -> None:
        now = time.time()
        expires = now + self._ttl
        ids = set(self._entries) if full else self._dirty & set(self._entries)
        removed, self._removed = self._removed, set()
        self._dirty.clear()
        pipe = self._redis.pipeline(transaction=False)
        for sid in ids:
            snapshot = self._entries[sid]()
            pipe.set(self._key(sid), json.dumps(snapshot, default=str), px=int(self._ttl * 1000))
            pipe.zadd(self._index, {self._member(sid): expires})
        for sid in removed:
            pipe.delete(self._key(sid))
            pipe.zrem(self._index, self._member(sid))
        if full:
            pipe.zadd(self._instances, {self.instance_id: expires})
            pipe.zremrangebyscore(self._index, "-inf", now)
            pipe.zremrangebyscore(self._instances, "-inf", now - 3600)
            self._last_full = time.monotonic()
        async with asyncio.timeout(self._timeout * 3):
            await pipe.execute()

    async def aclose(self) -> None:
        """Forget this instance's sessions in Redis (a clean shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._removed.update(self._entries)
        self._entries.clear()
        with contextlib.suppress(*REDIS_ERRORS):
            await self._flush(full=False)
            async with asyncio.timeout(self._timeout):
                await self._redis.zrem(self._instances, self.instance_id)


def merge_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per session: several instances' entries of one session added up."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    merged = []
    for entries in by_id.values():
        if len(entries) == 1:
            merged.append(entries[0])
            continue
        # the entry of the instance that runs the turn (most tokens) speaks for it
        lead = max(entries, key=lambda e: (bool(e.get("streaming")), e.get("tokens", 0)))
        row = dict(lead)
        row["connections"] = sum(e.get("connections", 1) for e in entries)
        row["turns"] = sum(e.get("turns", 0) for e in entries)
        row["connected_at"] = min(e["connected_at"] for e in entries)
        row["last_activity_at"] = max(e["last_activity_at"] for e in entries)
        merged.append(row)
    return merged


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
