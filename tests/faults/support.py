"""Tools of the fault suite: scale, a hand-made WebSocket client that can go silent, small
REST helpers. (The TCP proxy to cut or stall is ``tests.tcp_proxy``; the Redis that keeps
its data across a kill is ``tests.private_redis`` with ``durable=True``.)
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from typing import Any

import httpx

__all__ = [
    "SCALE",
    "RawWebSocket",
    "bearer",
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


class RawWebSocket:
    """A WebSocket client made by hand on a plain socket: it answers no ping, and can
    stop reading while keeping the connection open (a half-open client)."""

    def __init__(self, port: int, token: str | None, *, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            self._handshake(port, token)
        except BaseException:
            self.sock.close()
            raise

    def _handshake(self, port: int, token: str | None) -> None:
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

    def read_json(self) -> dict[str, Any]:
        """The next text frame, parsed (the server's pings are skipped, never answered)."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x1:
                data: dict[str, Any] = json.loads(payload)
                return data

    def start_turn(self, game_id: str, text: str) -> str:
        """From the connection's ``ready`` to ``turn.started``: a new session on
        ``game_id``, one question; returns the session id."""
        assert self.read_json()["type"] == "ready"
        self.send_text(json.dumps({"type": "session.start", "game_id": game_id}))
        ready = self.read_json()
        assert ready["type"] == "session.ready"
        self.send_text(json.dumps({"type": "message", "text": text}))
        assert self.read_json()["type"] == "turn.started"
        session_id: str = ready["session"]["id"]
        return session_id

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
