"""Rate limits with an injected clock."""

from __future__ import annotations

from chat_server.sessions.limits import AbuseCounter, TokenBucket, UserRates


def test_bucket_allows_a_burst_then_the_rate() -> None:
    """40 at once, then 20 a second."""
    bucket = TokenBucket(rate=20, burst=40, now=0.0)
    assert sum(bucket.allow(0.0) for _ in range(100)) == 40
    assert sum(bucket.allow(1.0) for _ in range(100)) == 20


def test_abuse_counter_trips_at_ten_in_a_minute_only() -> None:
    """Ten refusals within 60 s trip it; spread over longer they do not."""
    spread = AbuseCounter(limit=10, window=60)
    assert not any(spread.hit(t * 7.0) for t in range(20))
    burst = AbuseCounter(limit=10, window=60)
    results = [burst.hit(100 + t) for t in range(10)]
    assert results[-1] and not any(results[:-1])


def test_user_rates_keep_one_bucket_per_user_and_forget_the_oldest() -> None:
    """Each user has a burst of their own; past ``users`` the least recent is forgotten
    (it comes back with a full burst, as after being idle)."""
    rates = UserRates(rate=1.0, burst=2, users=2)
    assert [rates.allow("ann", 0.0) for _ in range(3)] == [True, True, False]
    assert rates.allow("bob", 0.0) and rates.allow("bob", 0.0)
    assert rates.allow("ann", 1.0)  # one token back after a second
    assert rates.allow("cyd", 1.0) and len(rates) == 2  # bob, least recent, forgotten
    assert [rates.allow("bob", 1.0) for _ in range(3)] == [True, True, False]
