"""A loopback OpenAI-compatible upstream for the bench: cheap, paced, in its own process.

``POST .../chat/completions`` answers a Chat Completions event stream (SSE ``data:``
lines, one chunk per token, a finish chunk, a usage chunk, ``data: [DONE]``) over
HTTP/1.1 with chunked encoding and keep-alive, like the real API. Every answer is
paced by the clock, not by a task per stream: token ``i`` is written at
``start + first + i * gap`` from one timer callback per stream, with each token's
bytes encoded once at start-up, so the upstream costs little of the load core.

The shape of an answer comes from the last message's text, so the load client steers
it through any relay: ``[bench tokens=200 gap_ms=20 first_ms=0]``; missing values use
the command-line defaults. Every token is 4 characters, so a client counts tokens as
``len(text) // 4``. ``GET /healthz`` answers 200.

Run: ``python bench/upstream.py --port 0``; prints ``LISTENING <port>`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import signal
import sys
import time
from typing import Any

TOKEN_CHARS = 4
WORDS = (" the", " dic", " rol", " win", " you", " set", " car", " pla", " bui", " tur")
_DIRECTIVE = re.compile(r"\[bench ([^\]]*)\]")
_MAX_HEAD = 64 * 1024
_MAX_BODY = 8 * 1024 * 1024


def _chunk(payload: bytes) -> bytes:
    """One HTTP chunk holding one SSE event."""
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(obj: dict[str, Any]) -> bytes:
    return _chunk(b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n")


def _base(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_bench",
    }


def _delta(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _event({**_base(model), "choices": [choice]})


class Encoded:
    """Every byte string an answer is made of, encoded once."""

    def __init__(self, model: str = "bench-model") -> None:
        self.head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
            b"connection: keep-alive\r\n\r\n"
        )
        self.role = _delta(model, {"role": "assistant", "content": ""})
        self.tokens = [_delta(model, {"content": w}) for w in WORDS]
        self.finish = _delta(model, {}, "stop")
        self.model = model
        self.done = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    def usage(self, prompt: int, completion: int) -> bytes:
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return _event({**_base(self.model), "choices": [], "usage": usage})


class Defaults:
    def __init__(self, tokens: int, gap_ms: float, first_ms: float) -> None:
        self.tokens, self.gap_ms, self.first_ms = tokens, gap_ms, first_ms


def _shape(body: Any, defaults: Defaults) -> tuple[int, float, float, int]:
    """(tokens, gap s, first-token delay s, prompt chars) from the request's last message."""
    tokens, gap, first = defaults.tokens, defaults.gap_ms, defaults.first_ms
    prompt = 0
    messages = body.get("messages") if isinstance(body, dict) else None
    if isinstance(messages, list) and messages:
        prompt = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        last = messages[-1]
        found = _DIRECTIVE.search(str(last.get("content", ""))) if isinstance(last, dict) else None
        if found:
            for part in found.group(1).split():
                key, _, value = part.partition("=")
                if key == "tokens":
                    tokens = max(1, min(100_000, int(value)))
                elif key == "gap_ms":
                    gap = max(0.0, float(value))
                elif key == "first_ms":
                    first = max(0.0, float(value))
    return tokens, gap / 1000, first / 1000, prompt


class Answer:
    """One paced answer on one connection; every write is a timer callback."""

    def __init__(self, conn: Conn, tokens: int, gap: float, first: float, prompt: int) -> None:
        self.conn, self.n, self.gap, self.first, self.prompt = conn, tokens, gap, first, prompt
        self.i = 0
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        enc = self.conn.enc
        self.conn.write(enc.head + enc.role)
        if self.gap == 0 and self.first == 0:
            words = enc.tokens
            self.conn.write(b"".join(words[i % len(words)] for i in range(self.n)))
            self.i = self.n
            self._end()
            return
        self.handle = self.loop.call_at(self.t0 + self.first, self.tick)

    def tick(self) -> None:
        words = self.conn.enc.tokens
        self.conn.write(words[self.i % len(words)])
        self.i += 1
        if self.i >= self.n:
            self._end()
        else:
            self.handle = self.loop.call_at(self.t0 + self.first + self.i * self.gap, self.tick)

    def _end(self) -> None:
        enc = self.conn.enc
        usage = enc.usage(max(1, self.prompt // 4), self.n)
        self.conn.write(enc.finish + usage + enc.done)
        self.handle = None
        self.conn.answer = None
        self.conn.feed(b"")  # a request that came early waits for this answer's end

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: parse a request, stream an answer, repeat."""

    def __init__(self, enc: Encoded, defaults: Defaults) -> None:
        self.enc, self.defaults = enc, defaults
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.answer: Answer | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None:
            self.answer.cancel()
            self.answer = None
        self.transport = None

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.feed(data)

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.answer is None and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length") or 0)
            if length > _MAX_BODY:
                self.transport.close()
                return
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4 : end + 4 + length])
            del self.buf[: end + 4 + length]
            self.handle(head[0], body)

    def handle(self, request_line: str, body: bytes) -> None:
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        if method == "GET" and path == "/healthz":
            self.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            self.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            return
        try:
            parsed = json.loads(body)
        except ValueError:
            self.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            return
        tokens, gap, first, prompt = _shape(parsed, self.defaults)
        self.answer = Answer(self, tokens, gap, first, prompt)
        self.answer.start()


async def serve(host: str, port: int, defaults: Defaults) -> None:
    loop = asyncio.get_running_loop()
    enc = Encoded()
    server = await loop.create_server(lambda: Conn(enc, defaults), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    gc.freeze()  # what exists now is never collected: pauses stay short (no stall for all)
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="loopback OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=20.0)
    parser.add_argument("--first-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    defaults = Defaults(args.tokens, args.gap_ms, args.first_ms)
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port, defaults))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(serve(args.host, args.port, defaults))
    return 0


if __name__ == "__main__":
    sys.exit(main())
