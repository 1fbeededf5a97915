"""A loopback TCP proxy a test can cut, stall and restore, to fail a real service under a
running server.

``with TcpProxy("127.0.0.1", 6379) as proxy:`` forwards ``127.0.0.1:proxy.port`` to the
service. ``cut()`` stops accepting and resets every open connection: the server sees its
Redis or database go down as in an outage, reset connections then refused ones.
``stall()`` keeps every connection open and accepts new ones but forwards nothing: a
frozen service, a black-holed network. ``restore()`` forwards again, on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.loop_server import LoopServer

__all__ = ["TcpProxy"]

CHUNK = 65536
CONNECT_TIMEOUT = 5.0


class TcpProxy(LoopServer):
    """Forwards each connection to ``host:port``; the controls are safe from any thread."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(name="tcp-proxy")
        self.target = (host, port)
        self._flowing = asyncio.Event()
        self._flowing.set()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones (idempotent)."""
        self.call(self._close())

    def stall(self) -> None:
        """Keep connections open but forward nothing until ``restore()``."""
        self.call(self._set_flowing(False))

    def restore(self) -> None:
        """Forward again, listening again on the same port after a ``cut()``."""
        self.call(self._restore())

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _restore(self) -> None:
        self._flowing.set()
        await self._listen()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        upstream: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                up_reader, upstream = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            # Close both ends before waiting on either: a second cancel while waiting
            # must not leave the other end open.
            ends = [end for end in (writer, upstream) if end is not None]
            for end in ends:
                if task.cancelling():
                    end.transport.abort()  # a reset, as when a service dies
                end.close()
            for end in ends:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await end.wait_closed()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(CHUNK):
            await self._flowing.wait()
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()
