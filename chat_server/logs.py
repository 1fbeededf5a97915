"""Logging: JSON lines for machines, plain text for a terminal, ids on every line.

``configure_logging`` installs one handler on the root logger (uvicorn's loggers
propagate to it), writing one JSON object per event (``ts``, ``level``, ``logger``,
``msg``, the bound context and any ``extra`` fields) when stderr is not a terminal,
and a readable line when it is.

Context: ``bind(user_id=..., session_id=...)`` adds fields to every line logged inside
it, in this task and in the tasks it creates (a ``contextvars.ContextVar``, copied by
``asyncio.create_task``); ``add_context`` does the same for the rest of the current task.

Redaction is a safety net, not a licence: ``RedactFilter`` masks what looks like a JWT,
a ``Bearer`` credential, an ``sk-``/``sk-ant-``/``AIza`` API key, a URL password or a
``token=`` query value in the message and its arguments, percent-encoded or not (a run
with escapes is decoded before it is looked at), and the formatters mask exception
text the same way. Never
log a token, a key or a user's message text on purpose.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CLIENT_GARBAGE",
    "CONTEXT_FIELDS",
    "ClientGarbageFilter",
    "ContextFilter",
    "JsonFormatter",
    "RedactFilter",
    "RequestContext",
    "TextFormatter",
    "add_context",
    "bind",
    "configure_logging",
    "log_context",
    "quiet_client_garbage",
    "redact",
]

CONTEXT_FIELDS = ("request_id", "connection_id", "user_id", "game_id", "session_id", "turn_id")
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
# Chatty at INFO (one line per upstream request, URLs included): only shown at DEBUG.
QUIET_LOGGERS = ("httpx", "httpcore", "alembic", "websockets")

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "chat_server_log_context", default=MappingProxyType({})
)

_SECRETS = (
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"\b(Bearer)\s+[^\s\"',;]+", re.IGNORECASE), r"\1 [redacted]"),
    (re.compile(r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{6,}"), "sk-[redacted]"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), "AIza[redacted]"),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@", re.IGNORECASE), r"\1[redacted]@"),
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's coloured copy of the message
    "context",
}
_HANDLER_MARK = "_chat_server_handler"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


# A run of URL characters with a percent escape in it: decoded (up to three times, for
# double encoding) before the patterns above look at it.
_ENCODED = re.compile(r"[A-Za-z0-9_.~+%-]*%[0-9A-Fa-f]{2}[A-Za-z0-9_.~+%-]*")
# A token in a URL's query, whatever it looks like (tokens in URLs are never accepted,
# and never logged either).
_URL_TOKEN = re.compile(
    r"([?&;](?:access_|id_|refresh_)?(?:token|jwt)=)(?!\[redacted)[^&\s\"'#]+", re.IGNORECASE
)


def _plain(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _decoded(match: re.Match[str]) -> str:
    run = match.group()
    decoded = run
    for _ in range(3):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    masked = _plain(decoded)
    return masked if masked != decoded else run


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential masked, also when it is
    percent-encoded (``%2E`` for the dots of a JWT), and any ``token=`` in a URL."""
    if "%" in text:
        text = _ENCODED.sub(_decoded, text)
    text = _plain(text)
    if "token=" in text.lower() or "jwt=" in text.lower():
        text = _URL_TOKEN.sub(r"\1[redacted]", text)
    return text


def log_context() -> dict[str, Any]:
    """The fields bound in the current context (a copy)."""
    return dict(_context.get())


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (None values are skipped) to every line logged inside the block.

    Safe across ``await``: the fields belong to this task's context, and tasks created
    inside the block start with a copy of them.
    """
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def add_context(**fields: Any) -> None:
    """Add ``fields`` for the rest of the current task (e.g. once a user has signed in)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


class RequestContext:
    """ASGI middleware: every line logged for a request (or WebSocket) has its request_id.

    The id is the client's ``X-Request-ID`` when it is short and plain (a proxy's), else
    a new one, bound once for the whole request or connection; HTTP responses carry it
    back in ``X-Request-ID``. A WebSocket's ``send`` is passed through untouched: it has
    no response header to add, and a wrapper would cost a call on every frame.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        if kind == "websocket":
            with bind(request_id=request_id):
                await self.app(scope, receive, send)
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        with bind(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class ContextFilter(logging.Filter):
    """Puts the bound fields on the record as ``record.context``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = log_context()
        return True


class RedactFilter(logging.Filter):
    """Masks credentials in the message and its arguments (renders them into ``msg``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the formatter report it
            return True
        record.msg, record.args = redact(message), None
        return True


# What uvicorn logs when a client sends bytes that are not the protocol (at ERROR, with
# a traceback, for invalid UTF-8 in a WebSocket text frame): the client's fault, not ours.
CLIENT_GARBAGE = frozenset(
    {
        "Invalid UTF-8 sequence received from client.",
        "Invalid HTTP request received.",
        "Unsupported upgrade request.",
    }
)


class ClientGarbageFilter(logging.Filter):
    """uvicorn's lines about client protocol garbage: one WARNING line each, no
    traceback, at most ``limit`` per ``window`` seconds (the rest counted, and the count
    told on the next line let through)."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        super().__init__()
        self.limit = limit
        self.window = window
        self._window_start = 0.0
        self._passed = 0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in CLIENT_GARBAGE:
            return True
        now = time.monotonic()
        if now - self._window_start >= self.window:
            self._window_start, self._passed = now, 0
        if self._passed >= self.limit:
            self._dropped += 1
            return False
        self._passed += 1
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        if self._dropped:
            record.msg = f"{record.msg} ({self._dropped} more not logged)"
            self._dropped = 0
        return True


def quiet_client_garbage() -> None:
    """Install ``ClientGarbageFilter`` on uvicorn's error logger (once)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ClientGarbageFilter) for f in logger.filters):
        logger.addFilter(ClientGarbageFilter())


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(getattr(record, "context", None) or {})
    fields.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context and extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        data: dict[str, Any] = {
            "ts": ts.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            data.setdefault(key, value)
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            data["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: msg [key=value ...]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            head, sep, tail = line.partition("\n")
            line = head + " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]" + sep + tail
        return redact(line) if record.exc_info or record.stack_info else line


def configure_logging(
    level: str, *, json_format: bool | None = None, stream: TextIO | None = None
) -> None:
    """Send every log line (ours, uvicorn's, libraries') through one handler.

    ``json_format`` None picks JSON unless ``stream`` (default stderr) is a terminal.
    Calling it again replaces the handler it installed before. uvicorn must then be
    started with ``log_config=None`` so that it does not install handlers of its own.
    """
    stream = stream if stream is not None else sys.stderr
    if json_format is None:
        isatty = getattr(stream, "isatty", None)
        json_format = not (callable(isatty) and isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactFilter())
    setattr(handler, _HANDLER_MARK, True)

    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    quiet_client_garbage()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
        )
