"""First-token and idle timeouts around any provider stream, in one place.

The same wrapper is where every provider's text is made valid (``text.Mender``): a
surrogate pair split across two deltas is joined, a lone surrogate or a NUL becomes
U+FFFD, before the turn sends or stores any of it.

A provider that sends nothing for ``first_token`` seconds after the request, or goes
quiet for ``idle`` seconds between events, is ``ProviderUnavailable``. Leaving the
wrapper (timeout, cancel, or the consumer's ``aclose``) closes the inner stream, which
closes the upstream request.

The clock is one watchdog timer per stream, not one per token: each event only moves
a deadline (a float); the timer, when it fires, re-arms itself at the current
deadline or, if that has passed, cancels the consuming task. So a token costs no
timer handle, context manager or ``current_task()`` lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from ..errors import ProviderUnavailable
from ..text import Mender, clean
from .base import CitationRef, Finish, StreamEvent, TextDelta

__all__ = ["with_timeouts"]


class _Watchdog:
    """Cancels ``task`` once ``deadline`` (loop time) passes without being moved."""

    __slots__ = ("armed_at", "deadline", "fired", "handle", "loop", "task")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], deadline: float
    ) -> None:
        self.loop = loop
        self.task = task
        self.deadline = deadline
        self.fired = False
        self.armed_at = deadline
        self.handle = loop.call_at(deadline, self._check)

    def move(self, deadline: float) -> None:
        """Cheap: only an earlier deadline than the armed one re-arms the timer."""
        self.deadline = deadline
        if deadline < self.armed_at:
            self.handle.cancel()
            self.armed_at = deadline
            self.handle = self.loop.call_at(deadline, self._check)

    def _check(self) -> None:
        if self.loop.time() >= self.deadline:
            self.fired = True
            self.task.cancel()
        else:
            self.armed_at = self.deadline
            self.handle = self.loop.call_at(self.deadline, self._check)

    def stop(self) -> None:
        self.handle.cancel()


async def with_timeouts(
    events: AsyncIterator[StreamEvent], *, first_token: float, idle: float
) -> AsyncGenerator[StreamEvent, None]:
    """Yield ``events``, raising ``ProviderUnavailable`` on a stall.

    Must be consumed by a single task (the one that first iterates it).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    watchdog = _Watchdog(loop, task, loop.time() + first_token)
    seen_text = False
    mender = Mender()
    mend = mender.text
    try:
        async for event in events:
            if seen_text:
                watchdog.deadline = loop.time() + idle
            if isinstance(event, TextDelta):
                if not seen_text:
                    seen_text = True
                    watchdog.move(loop.time() + idle)
                text = mend(event.text)
                if text is not event.text:
                    if not text:
                        continue  # a high surrogate held back until its pair comes
                    event = TextDelta(text)
            elif isinstance(event, Finish):
                tail = mender.flush()
                if tail:
                    yield TextDelta(tail)
            elif isinstance(event, CitationRef) and event.quote:
                event = CitationRef(event.passage_id, clean(event.quote))
            yield event
    except asyncio.CancelledError as exc:
        if watchdog.fired and task.uncancel() == 0:
            what = "between tokens" if seen_text else "before the first token"
            wait = idle if seen_text else first_token
            raise ProviderUnavailable(
                f"the provider sent nothing for {wait:g} s {what}",
                error_code="PROVIDER_TIMEOUT",
            ) from exc
        raise
    finally:
        watchdog.stop()
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
