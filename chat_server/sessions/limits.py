"""Per-connection rate limits, with an injected clock so they are testable without time."""

from __future__ import annotations

from collections import deque

__all__ = ["AbuseCounter", "TokenBucket"]


class TokenBucket:
    """``rate`` frames per second with bursts of ``burst``."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.updated = now

    def allow(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AbuseCounter:
    """True once ``limit`` refusals happened within ``window`` seconds."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque()

    def hit(self, now: float) -> bool:
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times) >= self.limit
