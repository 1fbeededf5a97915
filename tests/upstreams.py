"""Loopback servers that speak each model vendor's streaming wire format.

``OpenAIUpstream``, ``AnthropicUpstream`` and ``GeminiUpstream`` each run a small
HTTP/1.1 server (raw asyncio, so a drop, a garbage line or a client hang-up is
exactly what the test asked for) on 127.0.0.1, port 0, in a background thread
with its own event loop. Use one as a context manager::

    with OpenAIUpstream() as upstream:
        upstream.script = Script(tokens=["Hel", "lo"], token_delay=0.01)
        provider = OpenAIProvider(api_key="k", model="m", base_url=upstream.base_url)
        ...
        assert upstream.requests[0].body["stream"] is True

The server answers with ``Transfer-Encoding: chunked`` and keeps connections
alive, like the real APIs: a drop mid-stream (``Script.drop_after``) is an
incomplete chunked body, which clients see as a broken connection. When the
client closes its connection before the stream ended, ``disconnected`` is set and
``disconnected_at`` holds the ``time.monotonic()`` of the moment the server saw it.
Every connection, request body and header is recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "AnthropicUpstream",
    "GeminiUpstream",
    "OpenAIUpstream",
    "RecordedRequest",
    "Script",
    "Upstream",
]

_MAX_HEAD_BYTES = 64 * 1024
_START_TIMEOUT = 5.0
_STOP_TIMEOUT = 5.0


@dataclass
class Script:
    """What the next responses do; a test replaces or edits it before the call."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    token_delay: float = 0.0  # seconds between two tokens
    first_token_delay: float = 0.0  # seconds between the headers and the first token
    fail_status: int | None = None  # answer this error status instead of streaming
    drop_after: int | None = None  # close the connection after this many tokens
    garbage_after: int | None = None  # send a malformed event after this many tokens
    error_after: int | None = None  # send the vendor's in-stream error event instead
    error_overloaded: bool = True  # that error says "overloaded" (else a server error)
    finish: Literal["stop", "length"] = "stop"
    input_tokens: int = 17
    output_tokens: int | None = None  # default: the number of tokens
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    cite_block: int = 0  # Anthropic: the document content block a citation points at
    # The SSE variants (tests/sse_framing.py): JSON with raw non-ASCII characters
    # (else escaped, as json.dumps does), and, when ``writes`` is set, the whole stream
    # made first (plain framing, LF) and handed to it, which returns the bytes of each
    # write (a chunk of its own), sent ``write_delay`` seconds apart.
    ensure_ascii: bool = True
    writes: Callable[[list[bytes]], list[bytes]] | None = None
    write_delay: float = 0.0
    # A 200 answer that is not an event stream: this content type and body instead.
    plain_answer: tuple[str, bytes] | None = None
    # Figures sent as these raw JSON numbers instead, by name ("input_tokens",
    # "output_tokens"; Anthropic also "cite_block"): any number, even one json.dumps
    # cannot write (1e400, past the range of a float).
    raw_numbers: dict[str, str] = field(default_factory=dict)

    @property
    def total_output(self) -> int:
        return len(self.tokens) if self.output_tokens is None else self.output_tokens


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: Any  # the parsed JSON body, or None


class _Conn(asyncio.Protocol):
    """One client connection: buffers bytes, notices the hang-up at once."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.buffer = bytearray()
        self.arrived = asyncio.Event()
        self.lost = False
        self.streaming = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.upstream._connection_made(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.arrived.set()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.arrived.set()
        if self.streaming:
            self.upstream._client_disconnected()

    def write(self, data: bytes) -> bool:
        if self.lost or self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def chunk(self, data: bytes) -> bool:
        return self.write(b"%x\r\n%s\r\n" % (len(data), data))

    async def read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        while b"\r\n\r\n" not in self.buffer:
            if self.lost or len(self.buffer) > _MAX_HEAD_BYTES:
                return None
            self.arrived.clear()
            await self.arrived.wait()
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            if self.lost:
                return None
            self.arrived.clear()
            await self.arrived.wait()
            rest = bytes(self.buffer).partition(b"\r\n\r\n")[2]
        self.buffer = bytearray(rest[length:])
        return method, target, headers, rest[:length]


class Upstream:
    """The shared server; subclasses say which routes exist and how events look."""

    name = "upstream"

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.requests: list[RecordedRequest] = []
        self.disconnected = threading.Event()
        self.disconnected_at: float | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- what a vendor subclass provides ------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route(self, method: str, path: str) -> bool:
        raise NotImplementedError

    def authorized(self, headers: dict[str, str], query: dict[str, list[str]]) -> bool:
        raise NotImplementedError

    def error_body(self, status: int) -> dict[str, Any]:
        raise NotImplementedError

    def head_events(self, req: RecordedRequest, script: Script) -> list[bytes]:
        """Events sent with the response headers, before the first token."""
        return []

    def token_event(self, req: RecordedRequest, script: Script, index: int, text: str) -> bytes:
        raise NotImplementedError

    def tail_events(self, req: RecordedRequest, script: Script) -> list[bytes]:
        raise NotImplementedError

    def garbage_event(self) -> bytes:
        return b"data: {this is not json\n\n"

    def error_event(self, script: Script) -> bytes:
        raise NotImplementedError

    # -- lifecycle ---------------------------------------------------------------

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"{self.name} upstream did not start")
        if self._error is not None:
            raise RuntimeError(f"{self.name} upstream failed to start") from self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_STOP_TIMEOUT)

    @property
    def open_connections(self) -> int:
        """Client connections the server holds open right now (kept alive or busy)."""
        return len(self._conns)

    def reset(self) -> None:
        """Forget recorded requests and disconnects (the script stays)."""
        self.requests.clear()
        self.disconnected.clear()
        self.disconnected_at = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def _connection_made(self, conn: _Conn) -> None:
        self._conns.add(conn)
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _client_disconnected(self) -> None:
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()
        self.disconnected.set()

    # -- HTTP --------------------------------------------------------------------

    async def _serve(self, conn: _Conn) -> None:
        try:
            while not conn.lost:
                parsed = await conn.read_request()
                if parsed is None:
                    break
                method, target, headers, raw = parsed
                url = urlsplit(target)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                req = RecordedRequest(method, url.path, parse_qs(url.query), headers, body)
                self.requests.append(req)
                if not await self._respond(conn, req):
                    break
        finally:
            self._conns.discard(conn)
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.close()

    def _send_json(self, conn: _Conn, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        conn.write(
            b"HTTP/1.1 %d Error\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(data), data)
        )

    async def _respond(self, conn: _Conn, req: RecordedRequest) -> bool:
        """Answer one request; False when the connection is to be closed."""
        script = self.script
        if not self.route(req.method, req.path):
            self._send_json(conn, 404, self.error_body(404))
            return True
        if not self.authorized(req.headers, req.query):
            self._send_json(conn, 401, self.error_body(401))
            return True
        if script.fail_status is not None:
            self._send_json(conn, script.fail_status, self.error_body(script.fail_status))
            return True
        if script.plain_answer is not None:
            kind, body = script.plain_answer
            conn.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                % (kind.encode(), len(body), body)
            )
            return True
        conn.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        conn.streaming = True
        if script.writes is not None:
            return await self._write_all(conn, req, script, script.writes)
        for event in self.head_events(req, script):
            conn.chunk(event)
        if script.first_token_delay:
            await asyncio.sleep(script.first_token_delay)
        for index, text in enumerate(script.tokens):
            if index and script.token_delay:
                await asyncio.sleep(script.token_delay)
            if conn.lost:
                return False
            if index == script.drop_after:
                return self._drop(conn)
            if index == script.garbage_after:
                conn.chunk(self.garbage_event())
            if index == script.error_after:
                return self._end(conn, [self.error_event(script)])
            conn.chunk(self.token_event(req, script, index, text))
        n = len(script.tokens)
        if script.drop_after is not None and script.drop_after >= n:
            return self._drop(conn)
        if script.garbage_after is not None and script.garbage_after >= n:
            conn.chunk(self.garbage_event())
        if script.error_after is not None and script.error_after >= n:
            return self._end(conn, [self.error_event(script)])
        return self._end(conn, self.tail_events(req, script))

    async def _write_all(
        self,
        conn: _Conn,
        req: RecordedRequest,
        script: Script,
        writes: Callable[[list[bytes]], list[bytes]],
    ) -> bool:
        """The whole stream at once, cut and framed as ``writes`` says."""
        events = list(self.head_events(req, script))
        events += [self.token_event(req, script, i, t) for i, t in enumerate(script.tokens)]
        events += self.tail_events(req, script)
        for index, data in enumerate(w for w in writes(events) if w):  # empty: the end
            if index and script.write_delay:
                await asyncio.sleep(script.write_delay)
            if conn.lost:
                return False
            conn.chunk(data)
        return self._end(conn, [])

    def _end(self, conn: _Conn, events: list[bytes]) -> bool:
        for event in events:
            conn.chunk(event)
        conn.streaming = False
        return conn.write(b"0\r\n\r\n")

    def _drop(self, conn: _Conn) -> bool:
        conn.streaming = False
        if conn.transport is not None:
            conn.transport.close()  # flushes what was sent, then FIN: an incomplete body
        return False


_RAW_NUMBER = re.compile(rb'"<raw number ([-+.0-9eE]+)>"')


def _number(script: Script, name: str, value: int) -> Any:
    """``value``, or a stand-in that ``_json`` writes as the script's raw number for ``name``."""
    raw = script.raw_numbers.get(name)
    return value if raw is None else f"<raw number {raw}>"


def _json(payload: dict[str, Any], ensure_ascii: bool = True) -> bytes:
    return _RAW_NUMBER.sub(rb"\1", json.dumps(payload, ensure_ascii=ensure_ascii).encode())


def _data(payload: dict[str, Any], ensure_ascii: bool = True) -> bytes:
    return b"data: " + _json(payload, ensure_ascii) + b"\n\n"


def _event(name: str, payload: dict[str, Any], ensure_ascii: bool = True) -> bytes:
    return b"event: " + name.encode() + b"\n" + _data(payload, ensure_ascii)


class OpenAIUpstream(Upstream):
    """``POST /v1/chat/completions``: data-only SSE, a usage chunk, ``data: [DONE]``."""

    name = "openai"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def route(self, method: str, path: str) -> bool:
        return method == "POST" and path in ("/v1/chat/completions", "/chat/completions")

    def authorized(self, headers: dict[str, str], query: dict[str, list[str]]) -> bool:
        return headers.get("authorization", "").startswith("Bearer ")

    def error_body(self, status: int) -> dict[str, Any]:
        kind = {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(status, "server_error")
        return {"error": {"message": f"status {status}", "type": kind, "param": None, "code": kind}}

    def _chunk(self, req: RecordedRequest, choices: list[dict[str, Any]]) -> dict[str, Any]:
        model = req.body.get("model") if isinstance(req.body, dict) else None
        return {
            "id": "chatcmpl-loopback",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model or "loopback",
            "system_fingerprint": None,
            "choices": choices,
        }

    def head_events(self, req: RecordedRequest, script: Script) -> list[bytes]:
        delta = {"role": "assistant", "content": "", "refusal": None}
        return [_data(self._chunk(req, [{"index": 0, "delta": delta, "finish_reason": None}]))]

    def token_event(self, req: RecordedRequest, script: Script, index: int, text: str) -> bytes:
        choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
        return _data(self._chunk(req, [choice]), script.ensure_ascii)

    def tail_events(self, req: RecordedRequest, script: Script) -> list[bytes]:
        events = [
            _data(self._chunk(req, [{"index": 0, "delta": {}, "finish_reason": script.finish}]))
        ]
        options = req.body.get("stream_options") if isinstance(req.body, dict) else None
        if isinstance(options, dict) and options.get("include_usage"):
            usage = {
                "prompt_tokens": _number(script, "input_tokens", script.input_tokens),
                "completion_tokens": _number(script, "output_tokens", script.total_output),
                "total_tokens": script.input_tokens + script.total_output,
                "prompt_tokens_details": {"cached_tokens": script.cache_read_tokens},
            }
            events.append(_data({**self._chunk(req, []), "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return events

    def error_event(self, script: Script) -> bytes:
        kind = "server_overloaded" if script.error_overloaded else "server_error"
        return _data({"error": {"message": "in-stream error", "type": kind, "code": kind}})


class AnthropicUpstream(Upstream):
    """``POST /v1/messages``: named SSE events from message_start to message_stop."""

    name = "anthropic"

    def route(self, method: str, path: str) -> bool:
        return method == "POST" and path == "/v1/messages"

    def authorized(self, headers: dict[str, str], query: dict[str, list[str]]) -> bool:
        return bool(headers.get("x-api-key")) or headers.get("authorization", "").startswith(
            "Bearer "
        )

    def error_body(self, status: int) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            404: "not_found_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": f"status {status}"},
            "request_id": "req_loopback",
        }

    @staticmethod
    def cited_document(req: RecordedRequest) -> dict[str, Any] | None:
        """The first document block with citations enabled, if the request has one."""
        messages = req.body.get("messages", []) if isinstance(req.body, dict) else []
        for message in messages:
            content = message.get("content")
            if not isinstance(content, list):
                continue
            for block in content:
                citations = block.get("citations") or {}
                if block.get("type") == "document" and citations.get("enabled"):
                    return dict(block)
        return None

    def head_events(self, req: RecordedRequest, script: Script) -> list[bytes]:
        model = req.body.get("model") if isinstance(req.body, dict) else None
        message: dict[str, Any] = {
            "id": "msg_loopback",
            "type": "message",
            "role": "assistant",
            "model": model or "loopback",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": _number(script, "input_tokens", script.input_tokens),
                "output_tokens": 1,
                "cache_creation_input_tokens": script.cache_creation_tokens,
                "cache_read_input_tokens": script.cache_read_tokens,
            },
        }
        events = [
            _event("message_start", {"type": "message_start", "message": message}),
            _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            _event("ping", {"type": "ping"}),
        ]
        document = self.cited_document(req)
        if document is not None:
            blocks = document.get("source", {}).get("content", [])
            idx = min(script.cite_block, max(len(blocks) - 1, 0))
            cited = blocks[idx].get("text", "") if blocks else ""
            citation = {
                "type": "content_block_location",
                "cited_text": cited,
                "document_index": 0,
                "document_title": document.get("title"),
                "start_block_index": _number(script, "cite_block", idx),
                "end_block_index": idx + 1,
            }
            delta = {"type": "citations_delta", "citation": citation}
            events.append(
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            )
        return events

    def token_event(self, req: RecordedRequest, script: Script, index: int, text: str) -> bytes:
        delta = {"type": "text_delta", "text": text}
        return _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": delta},
            script.ensure_ascii,
        )

    def tail_events(self, req: RecordedRequest, script: Script) -> list[bytes]:
        stop = "max_tokens" if script.finish == "length" else "end_turn"
        return [
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {
                        "output_tokens": _number(script, "output_tokens", script.total_output)
                    },
                },
            ),
            _event("message_stop", {"type": "message_stop"}),
        ]

    def garbage_event(self) -> bytes:
        return b"event: content_block_delta\ndata: {this is not json\n\n"

    def error_event(self, script: Script) -> bytes:
        kind = "overloaded_error" if script.error_overloaded else "api_error"
        return _event("error", {"type": "error", "error": {"type": kind, "message": kind}})


_GEMINI_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):streamGenerateContent$")


class GeminiUpstream(Upstream):
    """``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``, CRLF-separated."""

    name = "gemini"

    def route(self, method: str, path: str) -> bool:
        return method == "POST" and _GEMINI_PATH.match(path) is not None

    def authorized(self, headers: dict[str, str], query: dict[str, list[str]]) -> bool:
        return bool(headers.get("x-goog-api-key")) or bool(query.get("key"))

    def error_body(self, status: int) -> dict[str, Any]:
        kind = {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            404: "NOT_FOUND",
            429: "RESOURCE_EXHAUSTED",
            503: "UNAVAILABLE",
        }.get(status, "INTERNAL")
        return {"error": {"code": status, "message": f"status {status}", "status": kind}}

    @staticmethod
    def _sse(payload: dict[str, Any], ensure_ascii: bool = True) -> bytes:
        return b"data: " + _json(payload, ensure_ascii) + b"\r\n\r\n"

    def _usage(self, script: Script, final: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "promptTokenCount": _number(script, "input_tokens", script.input_tokens)
        }
        if script.cache_read_tokens:
            usage["cachedContentTokenCount"] = script.cache_read_tokens
        if final:
            usage["candidatesTokenCount"] = _number(script, "output_tokens", script.total_output)
        usage["totalTokenCount"] = script.input_tokens + (script.total_output if final else 0)
        return usage

    def token_event(self, req: RecordedRequest, script: Script, index: int, text: str) -> bytes:
        candidate = {"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}
        return self._sse(
            {
                "candidates": [candidate],
                "usageMetadata": self._usage(script, final=False),
                "modelVersion": "loopback",
                "responseId": "loopback",
            },
            script.ensure_ascii,
        )

    def tail_events(self, req: RecordedRequest, script: Script) -> list[bytes]:
        reason = "MAX_TOKENS" if script.finish == "length" else "STOP"
        candidate = {
            "content": {"parts": [{"text": ""}], "role": "model"},
            "finishReason": reason,
            "index": 0,
        }
        return [
            self._sse(
                {
                    "candidates": [candidate],
                    "usageMetadata": self._usage(script, final=True),
                    "modelVersion": "loopback",
                    "responseId": "loopback",
                }
            )
        ]

    def garbage_event(self) -> bytes:
        return b"data: {this is not json\r\n\r\n"

    def error_event(self, script: Script) -> bytes:
        status = 503 if script.error_overloaded else 500
        return self._sse(self.error_body(status))
