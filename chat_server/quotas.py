"""Exact daily quota counters: how many turns a user started today, per feature and game.

Two implementations behind one ``QuotaCounter`` interface, with the same semantics:
``RedisQuotaCounter`` (exact across any number of instances) and ``MemoryQuotaCounter``
(the embedded default when ``REDIS_URL`` is unset: one instance only).

Key layout
    One Redis SET per user, feature, game and UTC day::

        {prefix}:quota:{<user_id>}:<feature>:<game_id>:<YYYYMMDD>

    e.g. ``chat:quota:{u-42}:chat:g-7:20261126``. Its members are turn ids, so a turn
    is counted once however often its reservation is retried, and a refund removes
    exactly that turn. The ``{user_id}`` hash tag keeps one user's keys in one Redis
    Cluster slot. ``used`` is the SET's cardinality.

Reserving
    ``reserve`` is one round trip: a Lua script (EVALSHA, loaded again if Redis answers
    NOSCRIPT) that grants again a turn id already in the set, refuses when the limit is
    reached, else adds the turn id and sets the key to expire a little after the next
    UTC midnight. Redis runs scripts one at a time, so with a limit of N exactly N of
    any burst of reservations, from any number of instances, are granted. A limit of
    None (unlimited) still counts. The day is the UTC date of the ``now`` the caller
    passes, which lets tests move the clock.

At midnight (UTC)
    Nothing runs. The next ``now`` falls on a new date, so a new, empty key is used and
    ``resets_at`` moves to the following midnight; yesterday's key expires on its own
    ``_EXPIRY_GRACE`` after midnight. A refund names the day through its ``now``: pass
    the ``now`` of the reservation so a turn that fails just after midnight gives back
    yesterday's place (giving back today's would be a no-op anyway).

When Redis is down
    Every call is bounded by ``timeout`` (default 1 s) on top of the client's own socket
    timeouts and retries, and raises ``chat_server.errors.Unavailable``: callers fail
    closed (the turn does not start; the client sees ``unavailable``). Nothing is cached
    or latched: the next call after Redis is back simply works. A reservation that timed
    out may still have been counted by Redis; retrying it with the same turn id is
    granted without counting twice.

Concurrency
    Both counters are safe to share between all turns of an event loop. The Redis
    counter keeps at most ``max_in_flight`` commands on the wire at once (redis-py 8's
    asyncio pool refuses, rather than waits, past its 100 connections); more callers
    wait for a slot within the same ``timeout``. The memory counter never awaits between
    its check and its add.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol, TypeVar

from chat_server.errors import Unavailable

from .redis_client import REDIS_ERRORS, RedisClient

log = logging.getLogger(__name__)

__all__ = [
    "MemoryQuotaCounter",
    "Quota",
    "QuotaCounter",
    "RedisQuotaCounter",
    "Reservation",
    "day_of",
    "next_midnight",
    "quota_key",
]

T = TypeVar("T")

# How long after midnight a day's key lives on (clock skew between instances, late refunds).
_EXPIRY_GRACE = timedelta(hours=1)
#: An owed refund is paid twice, this long apart: a script still queued in Redis when
#: the first SREM ran has run by the second.
_SETTLE = 0.5


def _utc(now: datetime) -> datetime:
    """``now`` in UTC; a naive datetime is taken to be UTC already."""
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def day_of(now: datetime) -> date:
    """The UTC day a moment belongs to."""
    return _utc(now).date()


def next_midnight(now: datetime) -> datetime:
    """The UTC midnight that ends ``now``'s day: when quotas reset."""
    return datetime.combine(day_of(now) + timedelta(days=1), time(), tzinfo=UTC)


def quota_key(prefix: str, *, user_id: str, feature: str, game_id: str, day: date) -> str:
    """The Redis key (and memory key) of one user's count for a feature, game and day."""
    return f"{prefix}:quota:{{{user_id}}}:{feature}:{game_id}:{day:%Y%m%d}"


@dataclass(frozen=True)
class Quota:
    """One user's use of a feature in one game today, as the contract's ``<quota>``."""

    feature: str
    daily_limit: int | None
    used: int
    resets_at: datetime

    @property
    def remaining(self) -> int | None:
        """Turns left today: None when unlimited, never negative."""
        if self.daily_limit is None:
            return None
        return max(self.daily_limit - self.used, 0)

    def to_dict(self) -> dict[str, Any]:
        """The contract's JSON shape, ``resets_at`` as ``2026-11-27T00:00:00Z``."""
        return {
            "feature": self.feature,
            "daily_limit": self.daily_limit,
            "used": self.used,
            "remaining": self.remaining,
            "resets_at": _utc(self.resets_at).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


@dataclass(frozen=True)
class Reservation:
    """The answer to a reservation: granted or not, and the quota after it."""

    granted: bool
    quota: Quota


class QuotaCounter(Protocol):
    """Counts turns per user, feature, game and UTC day, exactly under concurrency."""

    async def reserve(
        self,
        *,
        feature: str,
        user_id: str,
        game_id: str,
        turn_id: str,
        limit: int | None,
        now: datetime,
    ) -> Reservation:
        """Take one place for ``turn_id`` unless the limit is reached; idempotent per turn."""
        ...

    async def refund(
        self, *, feature: str, user_id: str, game_id: str, turn_id: str, now: datetime
    ) -> None:
        """Give back ``turn_id``'s place (a turn that failed before its first token)."""
        ...

    async def usage(
        self, *, feature: str, user_id: str, game_id: str, limit: int | None, now: datetime
    ) -> Quota:
        """The quota as it stands, without taking a place."""
        ...

    async def ping(self) -> None:
        """Raise ``Unavailable`` when the counter's store cannot be reached."""
        ...

    async def start(self) -> None:
        """Start background work (paying refunds owed during an outage)."""
        ...

    async def aclose(self) -> None: ...


# KEYS[1] the day's set; ARGV: turn id, limit (-1 = unlimited), expiry (unix seconds).
# Returns {granted (0/1), used}.
_RESERVE_LUA = """
local used = redis.call('SCARD', KEYS[1])
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return {1, used}
end
local limit = tonumber(ARGV[2])
if limit >= 0 and used >= limit then
  return {0, used}
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return {1, used + 1}
"""


class RedisQuotaCounter:
    """Quota counts in Redis: exact across every instance sharing the Redis.

    The client is the caller's (made in the app's lifespan, with socket timeouts) and
    is not closed here. Calls are safe to cancel: an interrupted command only drops its
    connection, and a reservation that may have landed is settled by retrying the same
    turn id.
    """

    def __init__(
        self,
        redis: RedisClient,
        prefix: str = "chat",
        *,
        timeout: float = 1.0,
        max_in_flight: int = 50,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_in_flight)
        self._reserve = redis.register_script(_RESERVE_LUA)
        # Refunds owed while Redis could not be reached: (key, turn id). SREM is
        # idempotent, so paying one twice, or one whose reservation never landed, is
        # harmless. Bounded: past the bound the oldest debts are dropped (and logged).
        self._owed: dict[tuple[str, str], None] = {}
        self._owed_limit = 100_000
        self._payer: asyncio.Task[None] | None = None
        self._owed_event = asyncio.Event()

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call within ``timeout``; any failure becomes ``Unavailable``.

        ``make`` is called only once a slot is free, so a call that times out while
        waiting leaves no coroutine behind.
        """
        try:
            async with asyncio.timeout(self._timeout):
                async with self._slots:
                    return await make()
        except REDIS_ERRORS as exc:
            raise Unavailable("Redis is unavailable", context={"service": "redis"}) from exc

    def _key(self, *, user_id: str, feature: str, game_id: str, now: datetime) -> str:
        return quota_key(
            self._prefix, user_id=user_id, feature=feature, game_id=game_id, day=day_of(now)
        )

    async def reserve(
        self,
        *,
        feature: str,
        user_id: str,
        game_id: str,
        turn_id: str,
        limit: int | None,
        now: datetime,
    ) -> Reservation:
        """Take one place for ``turn_id`` in one round trip; see the module docstring."""
        key = self._key(user_id=user_id, feature=feature, game_id=game_id, now=now)
        expire_at = int((next_midnight(now) + _EXPIRY_GRACE).timestamp())
        arg_limit = -1 if limit is None else max(limit, 0)
        try:
            granted, used = await self._call(
                lambda: self._reserve(keys=[key], args=[turn_id, arg_limit, expire_at])
            )
        except (Unavailable, asyncio.CancelledError):
            # The script may still run when a hung Redis wakes up, or after its asker
            # left (cancelled mid-flight): the turn never starts, so whatever place it
            # may take is owed back.
            self._owe(key, turn_id)
            raise
        quota = Quota(feature, limit, int(used), next_midnight(now))
        return Reservation(granted=bool(granted), quota=quota)

    async def refund(
        self, *, feature: str, user_id: str, game_id: str, turn_id: str, now: datetime
    ) -> None:
        """Give back ``turn_id``'s place on ``now``'s day; a second refund does nothing.

        Never fails: with Redis unreachable the refund is owed and paid when it is back.
        """
        key = self._key(user_id=user_id, feature=feature, game_id=game_id, now=now)
        try:
            await self._call(lambda: self._redis.srem(key, turn_id))
        except Unavailable:
            self._owe(key, turn_id)

    def _owe(self, key: str, turn_id: str) -> None:
        if len(self._owed) >= self._owed_limit:
            oldest = next(iter(self._owed))
            del self._owed[oldest]
            log.warning("quota: dropped an owed refund (more than %d owed)", self._owed_limit)
        self._owed[(key, turn_id)] = None
        self._owed_event.set()

    @property
    def owed(self) -> int:
        """Refunds waiting for Redis to come back."""
        return len(self._owed)

    async def start(self) -> None:
        """Start paying owed refunds in the background."""
        if self._payer is None:
            self._payer = asyncio.create_task(self._pay_forever(), name="quota-refunds")

    async def _pay_forever(self) -> None:
        while True:
            await self._owed_event.wait()
            self._owed_event.clear()
            while self._owed:
                batch = list(self._owed)[:500]
                if not await self._pay(batch):
                    await asyncio.sleep(1.0)
                    continue
                # A reservation's script sent before Redis hung (or before its turn was
                # cancelled) may run only now, after this SREM, on another connection:
                # paid once more when it must have run, the place is given back for sure.
                await asyncio.sleep(_SETTLE)
                if not await self._pay(batch):
                    continue
                for item in batch:
                    self._owed.pop(item, None)

    async def _pay(self, batch: list[tuple[str, str]]) -> bool:
        pipe = self._redis.pipeline(transaction=False)
        for key, turn_id in batch:
            pipe.srem(key, turn_id)
        try:
            await self._call(pipe.execute)
        except Unavailable:
            return False
        return True

    async def aclose(self) -> None:
        if self._payer is not None:
            self._payer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._payer
            self._payer = None

    async def usage(
        self, *, feature: str, user_id: str, game_id: str, limit: int | None, now: datetime
    ) -> Quota:
        """The quota on ``now``'s day, read with one SCARD."""
        key = self._key(user_id=user_id, feature=feature, game_id=game_id, now=now)
        used = await self._call(lambda: self._redis.scard(key))
        return Quota(feature, limit, int(used), next_midnight(now))

    async def ping(self) -> None:
        """Raise ``Unavailable`` unless Redis answers a PING within ``timeout``."""
        await self._call(self._redis.ping)


class MemoryQuotaCounter:
    """Quota counts in this process: the embedded default for a single instance.

    Counts are lost on restart and not shared between instances or processes. Safe
    under any number of concurrent calls on one event loop (no await between the check
    and the add); not thread-safe. When ``now`` reaches a new day, days before yesterday
    are dropped (yesterday stays for refunds of turns that straddle midnight).
    """

    def __init__(self, prefix: str = "chat") -> None:
        self._prefix = prefix
        self._sets: dict[str, set[str]] = {}
        self._key_days: dict[str, date] = {}
        self._today: date | None = None

    def _set(self, *, user_id: str, feature: str, game_id: str, now: datetime) -> set[str]:
        day = day_of(now)
        if self._today is None or day > self._today:
            self._today = day
            self._expire(before=day)
        key = quota_key(self._prefix, user_id=user_id, feature=feature, game_id=game_id, day=day)
        members = self._sets.get(key)
        if members is None:
            members = self._sets[key] = set()
            self._key_days[key] = day
        return members

    def _expire(self, *, before: date) -> None:
        """Drop every day older than yesterday (kept for refunds just after midnight)."""
        cutoff = before - timedelta(days=1)
        for key in [k for k, d in self._key_days.items() if d < cutoff]:
            del self._sets[key]
            del self._key_days[key]

    async def reserve(
        self,
        *,
        feature: str,
        user_id: str,
        game_id: str,
        turn_id: str,
        limit: int | None,
        now: datetime,
    ) -> Reservation:
        """Take one place for ``turn_id`` unless the limit is reached; idempotent per turn."""
        members = self._set(user_id=user_id, feature=feature, game_id=game_id, now=now)
        if turn_id in members:
            granted = True
        elif limit is not None and len(members) >= max(limit, 0):
            granted = False
        else:
            members.add(turn_id)
            granted = True
        return Reservation(granted, Quota(feature, limit, len(members), next_midnight(now)))

    async def refund(
        self, *, feature: str, user_id: str, game_id: str, turn_id: str, now: datetime
    ) -> None:
        """Give back ``turn_id``'s place on ``now``'s day; a second refund does nothing."""
        self._set(user_id=user_id, feature=feature, game_id=game_id, now=now).discard(turn_id)

    async def usage(
        self, *, feature: str, user_id: str, game_id: str, limit: int | None, now: datetime
    ) -> Quota:
        """The quota on ``now``'s day."""
        members = self._set(user_id=user_id, feature=feature, game_id=game_id, now=now)
        return Quota(feature, limit, len(members), next_midnight(now))

    async def ping(self) -> None:
        """Always reachable: the counts live in this process."""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
