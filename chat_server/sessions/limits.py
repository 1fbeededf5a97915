"""Per-connection rate limits, with an injected clock so they are testable without time."""

from __future__ import annotations

from collections import deque

__all__ = ["AbuseCounter", "TokenBucket"]


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
