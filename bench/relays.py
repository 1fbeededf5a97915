"""The two reference relays: a bare Starlette app on uvicorn, one WebSocket endpoint.

Both speak the subset of our protocol the load client uses (``ready`` on connect,
``session.start`` → ``session.ready``, ``message`` → ``turn.started``, one
``turn.delta`` per token, ``turn.completed``; ``ping`` → ``pong``) with no auth, no
flag, no quota, no storage: what a relay costs with nothing else on.

- ``sdk``: ``AsyncOpenAI.chat.completions.create(stream=True)``, typed chunks, the
  SDK's defaults (its connection pool keeps 100 idle connections).
- ``httpx``: ``httpx.AsyncClient.stream`` with hand SSE parsing (``aiter_lines`` and
  ``json.loads``), a pool sized for every stream: the floor for this stack.

Run: ``python bench/relays.py sdk --port 0 --upstream http://127.0.0.1:P/v1``; prints
``LISTENING <port>`` once serving.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

Tokens = Callable[[str], AsyncIterator[str]]
MODEL = "bench-model"


def _dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


def _api_key() -> str:
    """The upstream's key: ``BENCH_API_KEY`` (LiteLLM's master key) or any."""
    return os.environ.get("BENCH_API_KEY", "bench")


def sdk_tokens(base_url: str) -> tuple[Tokens, Callable[[], Awaitable[None]]]:
    """Tokens through the openai SDK's typed streaming chunks."""
    import openai

    client = openai.AsyncOpenAI(api_key=_api_key(), base_url=base_url, max_retries=0)

    async def tokens(text: str) -> AsyncIterator[str]:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices:
                content = chunk.choices[0].delta.content
                if content:
                    yield content

    return tokens, client.close


def httpx_tokens(base_url: str) -> tuple[Tokens, Callable[[], Awaitable[None]]]:
    """Tokens through raw httpx and hand SSE parsing."""
    import httpx

    client = httpx.AsyncClient(
        timeout=httpx.Timeout(60.0, connect=5.0),
        limits=httpx.Limits(max_connections=10_000, max_keepalive_connections=10_000),
    )
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"authorization": f"Bearer {_api_key()}"}
    loads = json.loads

    async def tokens(text: str) -> AsyncIterator[str]:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with client.stream("POST", url, json=body, headers=headers) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                choices = loads(data).get("choices")
                if choices:
                    content = (choices[0].get("delta") or {}).get("content")
                    if content:
                        yield content

    return tokens, client.aclose


def create_app(kind: str, base_url: str) -> Starlette:
    """The relay app; ``kind`` is ``sdk`` or ``httpx``."""
    make = sdk_tokens if kind == "sdk" else httpx_tokens
    state: dict[str, Tokens] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tokens, close = make(base_url)
        state["tokens"] = tokens
        try:
            yield
        finally:
            await close()

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(_dumps({"type": "ready", "user_id": "bench", "role": "basic"}))
        tokens = state["tokens"]
        try:
            while True:
                frame = json.loads(await ws.receive_text())
                kind = frame.get("type")
                if kind == "session.start":
                    session = {"id": uuid.uuid4().hex, "game_id": frame.get("game_id")}
                    await ws.send_text(_dumps({"type": "session.ready", "session": session}))
                elif kind == "ping":
                    await ws.send_text(_dumps({"type": "pong", "id": frame.get("id")}))
                elif kind == "message":
                    turn_id = uuid.uuid4().hex
                    await ws.send_text(_dumps({"type": "turn.started", "turn_id": turn_id}))
                    seq = 0
                    reason = "stop"
                    try:
                        async for text in tokens(frame["text"]):
                            seq += 1
                            delta = {"type": "turn.delta", "turn_id": turn_id, "seq": seq}
                            delta["text"] = text
                            await ws.send_text(_dumps(delta))
                    except Exception as exc:  # the bench counts it; the relay stays up
                        reason = "error"
                        await ws.send_text(
                            _dumps({"type": "error", "code": "provider_error", "message": str(exc)})
                        )
                    done = {"type": "turn.completed", "turn_id": turn_id, "finish_reason": reason}
                    await ws.send_text(_dumps(done))
        except WebSocketDisconnect:
            pass

    return Starlette(
        routes=[Route("/healthz", healthz), WebSocketRoute("/ws/chat", chat)], lifespan=lifespan
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a bare reference relay")
    parser.add_argument("kind", choices=["sdk", "httpx"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:P/v1")
    parser.add_argument(
        "--product-ws",
        action="store_true",
        help="the product's WebSocket settings (websockets-sansio, no permessage-deflate, "
        "its frame size limit) instead of uvicorn's defaults (bench/idle.py)",
    )
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(4096)
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    ws: dict[str, Any] = {}
    if args.product_ws:
        ws = {"ws": "websockets-sansio", "ws_per_message_deflate": False, "ws_max_size": 65536}
    config = uvicorn.Config(
        create_app(args.kind, args.upstream), log_level="warning", backlog=4096, **ws
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
