"""Tools of the fault suite: scale, a TCP forwarder to cut or stall, a Redis that keeps its
data across a kill, a hand-made WebSocket client that can go silent, small REST helpers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.server import free_port
from tests.services import missing

__all__ = [
    "SCALE",
    "DurableRedis",
    "Forwarder",
    "RawWebSocket",
    "bearer",
    "durable_redis",
    "first_game",
    "metric",
    "open_chat",
    "p99",
    "scaled",
]

# Set by conftest.py before collection; FAULT_SCALE, when given, always wins.
SCALE = float(os.environ.get("FAULT_SCALE", "1") or "1")
TIMEOUT = 10.0


def scaled(full: int, minimum: int = 1) -> int:
    """``full`` (the issue's figure) times ``FAULT_SCALE``, at least ``minimum``."""
    return max(minimum, round(full * SCALE))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def p99(values: list[float]) -> float:
    """The 99th percentile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]


async def first_game(url: str, token: str, name: str | None = None) -> str:
    """The id of the first game ``token`` sees (or the one called ``name``)."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(f"{url}/games", headers=bearer(token))
    response.raise_for_status()
    games = response.json()["games"]
    chosen = next(g for g in games if name is None or g["name"] == name)
    return str(chosen["id"])


async def open_chat(url: str, admin_token: str) -> None:
    """A global ``chat`` flag without a daily limit: fault turns are not capped at 50."""
    flag = {"feature_key": "chat", "scope_type": "global", "enabled": True, "metadata": {}}
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.put(f"{url}/admin/flags", json=flag, headers=bearer(admin_token))
    response.raise_for_status()


async def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` on ``/metrics`` whose labels include ``labels``."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        text = (await http.get(f"{url}/metrics")).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, rest = head.partition("{")
        if sample != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


class Forwarder:
    """A loopback TCP forwarder on a fixed port that a test can cut, stall and restore.

    ``cut()`` refuses new connections and resets the open ones (a service gone);
    ``stall()`` keeps every connection open but forwards nothing (a frozen service, a
    black-holed network); ``restore()`` goes back to forwarding, on the same port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()

    def __enter__(self) -> Forwarder:
        self._thread.start()
        self.restore()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.cut()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def cut(self) -> None:
        self._run(self._cut())

    def stall(self) -> None:
        self._run(self._set_flowing(False))

    def restore(self) -> None:
        self._run(self._restore())

    async def _set_flowing(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _restore(self) -> None:
        self._flowing.set()
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(5):
                up_reader, upstream = await asyncio.open_connection(*self.target)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, TimeoutError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            for end in (writer, upstream):
                if end is not None:
                    if end.transport is not None and task.cancelling():
                        end.transport.abort()  # a reset, as when a service dies
                    end.close()
                    with contextlib.suppress(Exception):
                        await end.wait_closed()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            await self._flowing.wait()
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof():
            sink.write_eof()


class DurableRedis:
    """A private redis-server that keeps its data across ``kill()``/``start()`` (AOF)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server", "the binary is not on PATH")
        self.binary = str(binary)
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def durable_redis(workdir: Path) -> Iterator[DurableRedis]:
    redis = DurableRedis(workdir)
    redis.start()
    try:
        yield redis
    finally:
        if redis.proc is not None and redis.proc.poll() is None:
            redis.thaw()
        redis.kill()


class RawWebSocket:
    """A WebSocket client made by hand on a plain socket: it answers no ping, and can
    stop reading while keeping the connection open (a half-open client)."""

    def __init__(self, port: int, token: str | None, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.sock.sendall(
            (
                f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\n{auth}\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(head.decode("latin-1"))

    def send_frame(self, payload: bytes, opcode: int = 0x1) -> None:
        """One masked frame (text by default), as a client must send it."""
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text: str) -> None:
        self.send_frame(text.encode())

    def read_frame(self) -> tuple[int, bytes]:
        """The next frame from the server (opcode, payload); pings are returned, not
        answered."""
        first, second = self._exact(2)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._exact(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._exact(8))
        return first & 0x0F, self._exact(size)

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the server")
            data += chunk
        return data

    def close(self) -> None:
        self.sock.close()
