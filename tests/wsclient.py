"""A small test client for ``/ws/chat``: every receive has a timeout."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

RECV_TIMEOUT = 10.0


class Client:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        import asyncio

        async with asyncio.timeout(timeout):
            raw = await self.ws.recv()
        data: dict[str, Any] = json.loads(raw)
        return data

    async def expect(self, kind: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        frame = await self.recv(timeout)
        assert frame["type"] == kind, frame
        return frame

    async def until(self, kind: str, timeout: float = RECV_TIMEOUT) -> list[dict[str, Any]]:
        """Every frame up to and including the first of type ``kind``."""
        frames = []
        while True:
            frame = await self.recv(timeout)
            frames.append(frame)
            if frame["type"] == kind:
                return frames

    async def closed(self, timeout: float = RECV_TIMEOUT) -> int | None:
        """Wait for the server to close; return its close code."""
        import asyncio

        from websockets.exceptions import ConnectionClosed

        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        return None

    async def start(self, game_id: str, **extra: Any) -> dict[str, Any]:
        await self.send({"type": "session.start", "game_id": game_id, **extra})
        return await self.expect("session.ready")

    async def ask(self, text: str) -> list[dict[str, Any]]:
        """Send a message; return every frame through ``turn.completed``."""
        await self.send({"type": "message", "text": text})
        return await self.until("turn.completed")


@asynccontextmanager
async def ws_client(
    url: str,
    token: str | None = None,
    *,
    auth_frame: bool = False,
    ready: bool = True,
    **kwargs: Any,
) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token and not auth_frame else None
    async with connect(
        url,
        additional_headers=headers,
        open_timeout=10,
        close_timeout=5,
        compression=None,
        **kwargs,
    ) as ws:
        client = Client(ws)
        if auth_frame and token:
            await client.send({"type": "auth", "token": token})
        if token and ready:
            await client.expect("ready")
        yield client
