"""Rate limits per connection, and per user for requests that have no connection, with
an injected clock so they are testable without time."""

from __future__ import annotations

from collections import OrderedDict, deque

__all__ = ["AbuseCounter", "TokenBucket", "UserRates"]


class TokenBucket:
    """``rate`` frames per second with bursts of ``burst``."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = self.burst
        self.updated = now

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AbuseCounter:
    """True once ``limit`` refusals happened within ``window`` seconds.

    Holds nothing until the first refusal (most connections never have one).
    """

    __slots__ = ("_times", "limit", "window")

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] | None = None

    def hit(self, now: float) -> bool:
        times = self._times
        if times is None:
            times = self._times = deque()
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times) >= self.limit


class UserRates:
    """A ``TokenBucket`` per user, for HTTP requests (no connection holds one): the
    ``users`` most recently seen keep theirs (an evicted user starts with a full burst,
    which is as if they had been idle)."""

    __slots__ = ("_buckets", "burst", "rate", "users")

    def __init__(self, rate: float, burst: int, users: int = 10_000) -> None:
        self.rate, self.burst, self.users = rate, burst, users
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, user_id: str, now: float) -> bool:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.users:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(user_id)
        return bucket.allow(now)

    def __len__(self) -> int:
        return len(self._buckets)
