"""Server-Sent Events framing for adapters that stream a follower's events over HTTP.

``follow(outbox, render, keepalive)`` turns a follower's outbox into SSE text: each
event ``render`` gives a block for (None skips it), a comment line after
``keepalive`` seconds without one (load balancers close idle streams at 60 s), and the
end when the outbox is closed and drained. Used by the admin watch; the AI SDK's HTTP
transport can use it the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..sessions.outbox import Outbox
from ..sessions.protocol import Event

__all__ = ["KEEPALIVE_SECONDS", "follow", "sse_block"]

KEEPALIVE_SECONDS = 15.0


def sse_block(data: str, *, event: str | None = None, event_id: str | None = None) -> str:
    """One SSE event (``data`` must hold no newline: JSON text does not)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    if event is not None:
        head += f"event: {event}\n"
    return f"{head}data: {data}\n\n"


async def follow(
    outbox: Outbox,
    render: Callable[[Event], str | None],
    keepalive: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[str]:
    """The SSE text of every event queued in ``outbox`` until it is closed.

    Cancel-safe: cancelling the consumer (the client went away) loses nothing that
    matters (the outbox is the caller's to detach).
    """
    while True:
        event: Any
        try:
            async with asyncio.timeout(keepalive):
                event = await outbox.get()
        except TimeoutError:
            yield ": keep-alive\n\n"
            continue
        if event is None:
            return
        block = render(event)
        if block is not None:
            yield block
