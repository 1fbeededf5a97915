"""The admin event feed on a real Redis: events queued together share a stream entry,
yet a subscriber gets each one, in order, with an id it can resume from."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from chat_server.redis_client import RedisClient
from chat_server.sessions.events import Event, RedisEvents

WAIT = 10


@pytest.fixture
async def feed(shared_client: RedisClient) -> AsyncIterator[RedisEvents]:
    """A started feed on a stream of its own, deleted after."""
    prefix = f"feedtest-{secrets.token_hex(4)}"
    events = RedisEvents(shared_client, prefix=prefix)
    await events.start()
    try:
        yield events
    finally:
        await events.aclose()
        await shared_client.delete(f"{prefix}:events")


async def take(feed: RedisEvents, last_id: str | None, count: int) -> list[Event]:
    """The first ``count`` events after ``last_id``."""
    got: list[Event] = []
    async with asyncio.timeout(WAIT):
        async for batch in feed.subscribe(last_id, wait=0.2):
            got.extend(batch)
            if len(got) >= count:
                return got[:count]
    return got


async def test_a_burst_of_events_arrives_whole_and_resumes_mid_entry(feed: RedisEvents) -> None:
    feed.publish("session.started", {"session_id": "s0"})
    first = await take(feed, "0-0", 1)  # an event alone: an entry of its own
    assert [(k, d) for _i, k, d in first] == [("session.started", {"session_id": "s0"})]
    assert "/" not in first[0][0]

    for n in range(30):  # one loop iteration: they share entries
        feed.publish("turn.started", {"turn_id": f"t{n}"})
    burst = await take(feed, first[0][0], 30)
    assert [d["turn_id"] for _i, _k, d in burst] == [f"t{n}" for n in range(30)]
    ids = [i for i, _k, _d in burst]
    assert len(set(ids)) == 30 and any("/" in i for i in ids)

    # An admin who saw up to the 12th resumes with the 13th, then goes on live.
    resumed_task = asyncio.create_task(take(feed, ids[11], 19))
    await asyncio.sleep(0.3)
    feed.publish("turn.completed", {"turn_id": "t0"})
    resumed = await resumed_task
    assert [d["turn_id"] for _i, _k, d in resumed] == [f"t{n}" for n in range(12, 30)] + ["t0"]
    assert resumed[-1][1] == "turn.completed"


async def test_events_that_come_soon_after_a_write_share_the_next_entry(
    feed: RedisEvents,
) -> None:
    """A burst spread over several loop iterations costs one write, not one per event."""
    feed.publish("turn.started", {"turn_id": "a"})
    for name in "bcd":  # each after the one before has had time to be written alone
        await asyncio.sleep(0.002)
        feed.publish("turn.started", {"turn_id": name})
    got = await take(feed, "0-0", 4)
    assert [d["turn_id"] for _i, _k, d in got] == ["a", "b", "c", "d"]
    entries = [i.partition("/")[0] for i, _k, _d in got]
    assert entries[1] == entries[2] == entries[3] != entries[0]
