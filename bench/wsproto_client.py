"""A minimal WebSocket client protocol (RFC 6455) for the load client, cheap per frame.

The load shares one core with the upstream, so it must cost far less per token than
the server it measures: an ``asyncio.Protocol`` parses the server's (unmasked) frames
in ``data_received`` and hands each text frame to ``on_text(payload, now)`` with the
arrival time taken once per read, with no task wake-up per frame. It answers pings,
answers a close, and never offers compression (``deflate=True`` offers
permessage-deflate as browsers do, and inflates compressed frames).
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
import zlib
from collections.abc import Callable

_MAX_FRAME = 16 * 1024 * 1024


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame: FIN set, masked with a random key."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + _mask(payload, key)


class WSClient(asyncio.Protocol):
    """One client connection; ``opened`` resolves after the 101 answer."""

    def __init__(
        self,
        host: str,
        path: str,
        headers: dict[str, str],
        on_text: Callable[[bytes, float], None],
        *,
        deflate: bool = False,
    ) -> None:
        self.host, self.path, self.headers = host, path, headers
        self.on_text = on_text
        self.deflate = deflate
        self._inflater: zlib._Decompress | None = None
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self._parts: list[bytes] = []
        self._compressed = False

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {self.path} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.deflate:
            lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            if " 101 " not in head.split("\r\n", 1)[0]:
                if not self.opened.done():
                    self.opened.set_exception(ConnectionError(head.split("\r\n", 1)[0]))
                self.close_now()
                return
            self.upgraded = True
            if "permessage-deflate" in head.lower():
                self._inflater = zlib.decompressobj(-15)
            if not self.opened.done():
                self.opened.set_result(None)
        self._frames(now)

    # -- frames ----------------------------------------------------------------------
    def _frames(self, now: float) -> None:
        buf = self.buf
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            off = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[off : off + 2], "big")
                off += 2
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[off : off + 8], "big")
                off += 8
            if length > _MAX_FRAME:
                self.close_now()
                return
            if size - off < length:
                break
            payload = bytes(buf[off : off + length])
            pos = off + length
            self._frame(b0, payload, now)
        if pos:
            del buf[:pos]

    def _frame(self, b0: int, payload: bytes, now: float) -> None:
        opcode = b0 & 0x0F
        fin = b0 & 0x80
        if opcode == 0x1 or opcode == 0x0:
            if opcode == 0x1:
                self._compressed = bool(b0 & 0x40)
            if not fin:
                self._parts.append(payload)
                return
            if self._parts:
                payload = b"".join(self._parts) + payload
                self._parts.clear()
            if self._compressed and self._inflater is not None:
                payload = self._inflater.decompress(payload + b"\x00\x00\xff\xff")
            self.on_text(payload, now)
        elif opcode == 0x9:
            self._write(encode_frame(0xA, payload))
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self._write(encode_frame(0x8, payload[:2]))
            if not self.closed.done():
                self.closed.set_result(code)
            self.close_now()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def send_text(self, text: str) -> None:
        self._write(encode_frame(0x1, text.encode()))

    def close(self, code: int = 1000) -> None:
        """Send a close frame; the server answers and closes the TCP connection."""
        self._write(encode_frame(0x8, struct.pack("!H", code)))

    def close_now(self) -> None:
        if self.transport is not None:
            self.transport.close()
