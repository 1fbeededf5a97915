"""The send queue: order kept, deltas merged, bounded, drained on close."""

from __future__ import annotations

import asyncio

import pytest

from chat_server.sessions.outbox import Outbox, SlowClient
from chat_server.sessions.turn import Turn
from tests.sessions.test_turn import make_turn


async def drain(outbox: Outbox) -> list[dict[str, object]]:
    outbox.close()
    frames = []
    async with asyncio.timeout(1):
        while (frame := await outbox.get()) is not None:
            frames.append(frame)
    return frames


async def test_many_tokens_while_the_writer_is_busy_become_one_delta() -> None:
    """1,000 tokens that arrive before the writer pulls go out as one delta."""
    outbox = Outbox(max_frames=4)
    turn: Turn = make_turn()
    outbox.put({"type": "turn.started"})
    for i in range(1000):
        turn.add_text(f"{i} ", float(i))
        outbox.pull(turn)
    outbox.put({"type": "turn.completed"})
    frames = await drain(outbox)
    assert [f["type"] for f in frames] == ["turn.started", "turn.delta", "turn.completed"]
    assert frames[1]["text"] == "".join(f"{i} " for i in range(1000))
    assert len(outbox) == 0


async def test_a_client_that_never_reads_is_refused_past_the_bound() -> None:
    """More ordinary frames than max_frames queued: SlowClient."""
    outbox = Outbox(max_frames=3)
    for i in range(3):
        outbox.put({"type": "pong", "id": i})
    with pytest.raises(SlowClient):
        outbox.put({"type": "pong", "id": 3})


async def test_get_waits_for_a_frame() -> None:
    """The writer sleeps until something is queued."""
    outbox = Outbox()
    waiter = asyncio.create_task(outbox.get())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    outbox.put({"type": "pong", "id": 1})
    async with asyncio.timeout(1):
        assert await waiter == {"type": "pong", "id": 1}


async def test_a_woken_consumer_takes_frames_in_order_until_none_is_left() -> None:
    """With a wake callback: called when a frame or marker is queued and on close; pop() gives the
    frames in order (a turn's text merged at its marker), then None."""
    woken: list[int] = []
    outbox = Outbox(wake=lambda: woken.append(len(outbox)))
    turn: Turn = make_turn()
    assert outbox.pop() is None
    outbox.put({"type": "turn.started"})
    turn.add_text("Hel", 1.0)
    outbox.pull(turn)
    turn.add_text("lo", 2.0)
    outbox.pull(turn)  # already queued: no second marker, no call
    outbox.put({"type": "turn.completed"})
    assert woken == [1, 2, 3]
    frames = []
    while (frame := outbox.pop()) is not None:
        frames.append(frame)
    assert [f["type"] for f in frames] == ["turn.started", "turn.delta", "turn.completed"]
    assert frames[1]["text"] == "Hello"
    outbox.close()
    assert woken == [1, 2, 3, 0]
    outbox.put({"type": "pong", "id": 1})  # closed: dropped, nobody woken
    assert woken == [1, 2, 3, 0] and outbox.pop() is None
