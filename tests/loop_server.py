"""A loopback asyncio TCP server on its own event loop in a daemon thread.

Why: a test drives its fake services (the fake BGG, the TCP proxy) from its own thread
or loop while they serve, and stopping one must cut every connection it holds open.
This is that thread, start and stop, kept once; a subclass says what a connection does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["LoopServer"]

T = TypeVar("T")
CALL_TIMEOUT = 10.0


class LoopServer:
    """``with`` starts listening on ``127.0.0.1:self.port`` (a free port); leaving stops.

    A subclass implements ``handle(reader, writer)``: one task per connection on the
    server's loop, cancelled by ``_close()``. ``call()`` runs a coroutine on that loop
    from any other thread and waits for it; it is the only way in from outside.
    """

    def __init__(self, name: str) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> Self:
        self._thread.start()
        self.call(self._listen())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.call(self._close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()

    def _run(self) -> None:
        self._loop.run_forever()
        # A connection accepted in the instant of closing has a task that had not run;
        # finish it too, so no socket outlives the loop.
        self._loop.run_until_complete(self._close())

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=CALL_TIMEOUT)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _listen(self) -> None:
        """Listen, unless already listening: on a free port the first time, then on the
        same port again (``reuse_address``), so a client can reconnect after a cut."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        """Stop listening and cancel every connection's handler (idempotent)."""
        if self._server is not None:
            self._server.close()
        # Loop: a handler may start while the others are being cancelled.
        while self._handlers:
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            await self.handle(reader, writer)
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            if not writer.transport.is_closing():
                writer.transport.abort()
