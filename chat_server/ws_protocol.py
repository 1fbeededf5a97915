"""uvicorn's ``websockets-sansio`` WebSocket protocol, holding less per idle connection.

An instance holds tens of thousands of idle WebSockets (issue 21: RSS per idle
connection). uvicorn's protocol keeps, for the whole life of a connection, things
only its first moments need; ``LeanWebSocketProtocol`` changes only that, and
behaves the same otherwise:

- the handshake's parsed request and response (websockets' ``Request``/``Response``
  with their ``Headers``, about 3 KB): let go, and the request's headers emptied,
  once the response is sent (the ASGI scope keeps its own copy of the headers, which
  the app reads);
- the inbound queue, an ``asyncio.Queue`` (four deques, 2.5 KB): an ``_Inbox`` of
  a list and a waiter made only while the reader waits;
- the ``writable`` flag, an ``asyncio.Event`` (a deque): a ``_Flag`` whose waiters
  exist only while a send waits for a full buffer to drain.

The methods replaced are those uvicorn's protocol calls (``put_nowait``, ``get``,
``empty``; ``set``, ``clear``, ``wait``); ``tests/faults`` and the WebSocket tests
run through this class.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["LeanWebSocketProtocol"]


class _Inbox:
    """A FIFO of ASGI receive events with as many waiting readers as come (one, here)."""

    __slots__ = ("_items", "_waiters")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiters: list[asyncio.Future[None]] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        self._wake_one()

    def _wake_one(self) -> None:
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)
                return

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            if self._waiters is None:
                self._waiters = []
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if self._items and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: the next reader takes it
                raise
            finally:
                self._waiters.remove(waiter)
                if not self._waiters:
                    self._waiters = None
        return self._items.pop(0)


class _Flag:
    """``asyncio.Event``'s ``set``/``clear``/``wait``, with no deque while nobody waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = True  # uvicorn's ``writable`` starts set
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        # Called once, right after the handshake's response was sent: the parsed
        # request and response are not read again. websockets' parser keeps the
        # request object for the connection's life (a local of its generator), so its
        # headers are emptied as well.
        request = getattr(self, "request", None)
        if request is not None:
            request.headers.clear()
        self.request = self.response = None  # type: ignore[assignment]
        super().start_keepalive()
