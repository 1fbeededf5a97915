"""Server-Sent Events framing for adapters that stream a follower's events over HTTP.

``follow(outbox, render, keepalive)`` turns a follower's outbox into SSE text: each
event ``render`` gives a block for (None skips it), a comment line after
``keepalive`` seconds without one (load balancers close idle streams at 60 s), and the
end when the outbox is closed and drained. Used by the admin watch and the AI SDK's
HTTP transport. ``EventStream`` is their response: what it holds (a follower, a
connection slot) is let go however it ends, also when the client left before its first
byte (the body's generator then never starts, so a ``finally`` in it never runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from ..sessions.outbox import Outbox
from ..sessions.protocol import Event

__all__ = ["HEADERS", "KEEPALIVE_SECONDS", "EventStream", "follow", "sse_block"]

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


#: What every event stream answers with: no caching, and no buffering by a proxy.
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStream(StreamingResponse):
    """A ``text/event-stream`` response (``HEADERS`` and ``headers``) that calls
    ``on_end``, if any, once, however it ends."""

    def __init__(
        self,
        body: AsyncIterator[str],
        on_end: Callable[[], Awaitable[None] | None] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            body, media_type="text/event-stream", headers={**HEADERS, **(headers or {})}
        )
        self._on_end = on_end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            ended = self._on_end() if self._on_end is not None else None
            if ended is not None:
                await ended
