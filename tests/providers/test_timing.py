"""First-token and idle timeouts (one watchdog per stream)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from chat_server.errors import ProviderUnavailable
from chat_server.providers.base import Finish, StreamEvent, TextDelta
from chat_server.providers.timing import with_timeouts


async def source(delays: list[float], closed: list[bool]) -> AsyncIterator[StreamEvent]:
    try:
        for i, delay in enumerate(delays):
            await asyncio.sleep(delay)
            yield TextDelta(f"t{i} ")
        yield Finish("stop")
    finally:
        closed.append(True)


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [e async for e in events]


async def test_a_steady_stream_passes_through_whole() -> None:
    """Every event arrives, in order, and the source is closed at the end."""
    closed: list[bool] = []
    async with asyncio.timeout(5):
        got = await collect(with_timeouts(source([0.01] * 20, closed), first_token=0.2, idle=0.2))
    assert [e.text for e in got if isinstance(e, TextDelta)] == [f"t{i} " for i in range(20)]
    assert closed == [True]


async def test_no_first_token_in_time_is_unavailable_and_closes_the_source() -> None:
    """Nothing within first_token seconds: ProviderUnavailable, and the source closed."""
    closed: list[bool] = []
    started = time.monotonic()
    with pytest.raises(ProviderUnavailable, match="before the first token"):
        async with asyncio.timeout(5):
            await collect(with_timeouts(source([1.0], closed), first_token=0.1, idle=5))
    assert time.monotonic() - started < 0.5
    assert closed == [True]


async def test_a_gap_longer_than_idle_is_unavailable() -> None:
    """A stall between tokens: ProviderUnavailable naming the gap."""
    closed: list[bool] = []
    with pytest.raises(ProviderUnavailable, match="between tokens"):
        async with asyncio.timeout(5):
            await collect(with_timeouts(source([0.0, 0.01, 1.0], closed), first_token=5, idle=0.1))


async def test_an_outside_cancel_stays_a_cancel() -> None:
    """Cancelling the consumer is a cancel, not a provider timeout."""
    closed: list[bool] = []
    task = asyncio.create_task(
        collect(with_timeouts(source([0.05] * 100, closed), first_token=5, idle=5))
    )
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == [True]
