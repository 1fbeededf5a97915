"""Feature flags in memory, the same on every instance within a second.

Every turn decides its flags from memory (no database or Redis round trip). A change
(``PUT``/``DELETE /admin/flags``) reloads the taking instance at once, bumps a version
number in Redis and publishes a signal; other instances reload on the signal, and a
poller compares the version every ``poll_interval`` seconds so a lost signal still
converges. Without Redis (one instance) the local reload is all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .backplane import Backplane
from .flags import Decision, FlagSet
from .redis_client import REDIS_ERRORS, RedisClient
from .storage.engine import Database
from .storage.flags import list_flags

__all__ = ["FlagCache"]

log = logging.getLogger(__name__)
CHANNEL = "flags"


class FlagCache:
    """The flags of this environment, reloaded on every change anywhere."""

    def __init__(
        self,
        db: Database,
        *,
        environment: str,
        backplane: Backplane,
        redis: RedisClient | None,
        prefix: str = "chat",
        poll_interval: float = 0.5,
    ) -> None:
        self._db = db
        self._environment = environment
        self._backplane = backplane
        self._redis = redis
        self._version_key = f"{prefix}:flags:version"
        self._poll_interval = poll_interval
        self._flags = FlagSet([], environment=environment)
        self._version: int | None = None
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        backplane.subscribe(CHANNEL, self._on_signal)

    def decide(
        self,
        *,
        feature: str,
        user_id: str,
        role: str,
        game_id: str | None,
        section: str | None,
    ) -> Decision:
        """Decide from memory; safe to call from any task, never waits."""
        return self._flags.decide(
            feature=feature, user_id=user_id, role=role, game_id=game_id, section=section
        )

    async def start(self) -> None:
        await self.reload()
        if self._redis is not None:
            self._poller = asyncio.create_task(self._poll(), name="flag-poller")

    async def reload(self) -> None:
        """Read the flags from the database (one reload at a time)."""
        async with self._lock:
            version = await self._remote_version()
            flags = await list_flags(self._db, self._environment)
            self._flags = FlagSet(flags, environment=self._environment)
            self._version = version

    async def changed(self) -> None:
        """Call after a flag was written: reload here, then tell the other instances."""
        if self._redis is not None:
            try:
                async with asyncio.timeout(1.0):
                    await self._redis.incr(self._version_key)
            except REDIS_ERRORS:
                log.warning("flags: could not bump the version in Redis; others poll")
        await self.reload()
        with contextlib.suppress(Exception):
            await self._backplane.publish(CHANNEL, str(self._version))

    async def _on_signal(self, _channel: str, _message: str) -> None:
        await self.reload()

    async def _remote_version(self) -> int | None:
        if self._redis is None:
            return None
        try:
            async with asyncio.timeout(1.0):
                raw = await self._redis.get(self._version_key)
        except REDIS_ERRORS:
            return self._version
        return int(raw) if raw is not None else 0

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                if await self._remote_version() != self._version:
                    await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("flags: reload failed; will retry", exc_info=True)

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
