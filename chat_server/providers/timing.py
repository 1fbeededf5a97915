"""First-token and idle timeouts around any provider stream, in one place.

A provider that sends nothing for ``first_token`` seconds after the request, or goes
quiet for ``idle`` seconds between events, is ``ProviderUnavailable``. Leaving the
wrapper (timeout, cancel, or the consumer's ``aclose``) closes the inner stream, which
closes the upstream request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator

from ..errors import ProviderUnavailable
from .base import StreamEvent, TextDelta

__all__ = ["with_timeouts"]


async def with_timeouts(
    events: AsyncIterator[StreamEvent], *, first_token: float, idle: float
) -> AsyncGenerator[StreamEvent, None]:
    """Yield ``events``, raising ``ProviderUnavailable`` on a stall."""
    iterator = aiter(events)
    seen_text = False
    try:
        while True:
            timeout = idle if seen_text else first_token
            try:
                async with asyncio.timeout(timeout):
                    event = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError as exc:
                what = "between tokens" if seen_text else "before the first token"
                raise ProviderUnavailable(
                    f"the provider sent nothing for {timeout:g} s {what}",
                    error_code="PROVIDER_TIMEOUT",
                ) from exc
            if isinstance(event, TextDelta):
                seen_text = True
            yield event
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
