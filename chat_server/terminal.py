"""``chat-server chat``: a terminal client that streams answers as they arrive.

It speaks the public WebSocket protocol (CONTRACT §2) like any other client: it signs
in with ``--token``, else ``$TOKEN``, else a dev token minted with the local secret
(never in prod), starts or resumes a session, then reads questions line by line. Each
answer is printed delta by delta; a footer gives the finish reason, who answered
(provider and model), tokens, cost and citations, with what ``turn.completed`` carries.

The connection is watched at the prompt too: when the server closes it (an
administrator ended the session, the server restarts, the token expired) the client
says so in words at once and exits 1.

Ctrl-C while an answer streams sends ``cancel`` (the turn ends as ``cancelled`` and
the prompt comes back); Ctrl-C or Ctrl-D at the prompt leaves with status 0. Stdin is
read through the event loop (``add_reader``), so no thread is left blocked on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from .config import Settings

__all__ = ["chat_url", "closed_reason", "footer", "run_chat"]

T = TypeVar("T")

DEV_TOKEN_TTL = 12 * 3600
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
REPLY_TIMEOUT = 30.0  # for session.ready and ready; a turn may take longer between deltas
MAX_FRAME = 16 * 1024 * 1024  # session.ready carries the whole history
PROMPT = "> "
# Why the server closed the connection, in words (CONTRACT §2, "Errors and close codes").
CLOSE_REASONS = {
    1000: "the server closed the connection",
    1001: "the server is going away",
    1006: "the connection was lost",
    1007: "the server refused text that is not valid UTF-8",
    1008: "the server closed the connection for too many refused frames or connections",
    1009: "a frame was larger than the server accepts",
    1011: "the server closed the connection after an internal error or a missed ping",
    1012: "the server is restarting; start again in a moment",
    4000: "an administrator ended this session",
    4401: "the token was refused or has expired",
    4403: "a refreshed token named another user",
    4408: "no token arrived in time",
}
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def run_chat(settings: Settings, args: argparse.Namespace) -> int:
    """Run the client until the user leaves; the process exit status."""
    token = args.token or os.environ.get("TOKEN", "").strip() or _dev_token(settings, args.user)
    if token is None:
        return 1
    url = chat_url(settings, args.url)
    try:
        return asyncio.run(_Client(url, token, args).run())
    except KeyboardInterrupt:  # Ctrl-C before the prompt was up
        print(file=sys.stderr)
        return 130


def chat_url(settings: Settings, url: str | None) -> str:
    """``--url`` as a ``/ws/chat`` URL (``http://host:port`` is accepted too)."""
    if not url:
        host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{settings.port}/ws/chat"
    parts = urlsplit(url if "://" in url else f"ws://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws/chat"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def _dev_token(settings: Settings, user: str) -> str | None:
    from .auth import mint_token
    from .services import with_local_secret

    if settings.is_prod:
        _fail("pass --token: dev tokens are not minted when ENVIRONMENT is prod")
        return None
    secret = with_local_secret(settings).supabase_jwt_secret
    if not secret:
        _fail("pass --token: there is no SUPABASE_JWT_SECRET to mint a dev token with")
        return None
    return mint_token(
        secret=secret, user_id=user, role="basic", ttl=DEV_TOKEN_TTL, issuer=settings.jwt_issuer
    )


def _reason(exc: Exception) -> str:
    """A connect failure in a few words (asyncio's own text names addresses, not causes)."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {OPEN_TIMEOUT:.0f} s"
    if isinstance(exc, OSError):
        code = exc.errno or next((int(n) for n in re.findall(r"\[Errno (\d+)\]", str(exc))), 0)
        if code == errno.ECONNREFUSED:
            return "connection refused (is `chat-server serve` running?)"
        if isinstance(exc, socket.gaierror):
            return f"unknown host ({exc.strerror})"
        if code:
            return os.strerror(code)
    return str(exc) or type(exc).__name__


def closed_reason(exc: ConnectionClosed) -> str:
    """Why the connection closed, in words, with the close code."""
    if exc.rcvd is None:
        return f"{CLOSE_REASONS[1006]} (no close frame)"
    code, reason = exc.rcvd.code, exc.rcvd.reason
    words = CLOSE_REASONS.get(code, "the server closed the connection")
    return f"{words} (close code {code}{': ' + reason if reason else ''})"


def _fail(message: str) -> None:
    print(f"chat-server chat: {message}", file=sys.stderr, flush=True)


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


class _Lines:
    """Lines from a file descriptor, read through the event loop (one reader at a time).

    Cancelling ``readline`` is safe: what was read stays buffered for the next call.
    A descriptor the loop cannot watch (a regular file) is read directly: it never blocks.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False
        self.watchable = True
        self.tty = os.isatty(fd)

    def push_back(self, line: str | None) -> None:
        """Return a line already read (None: the end of input) to be read again."""
        if line is None:
            self.eof = True
        else:
            self.buffer = line.encode() + b"\n" + self.buffer

    async def readline(self) -> str | None:
        while b"\n" not in self.buffer and not self.eof:
            data = await self._read()
            self.eof = not data
            self.buffer += data
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")

    async def _read(self) -> bytes:
        if not self.watchable:
            return os.read(self.fd, 65536)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        try:
            loop.add_reader(self.fd, _wake, ready)
        except PermissionError:
            self.watchable = False
            return os.read(self.fd, 65536)
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)
        return os.read(self.fd, 65536)


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


_FRAME_SHOWN = object()  # _line_or_frame: a frame was shown instead of a line read


class _Client:
    def __init__(self, url: str, token: str, args: argparse.Namespace) -> None:
        self.url = url
        self.token = token
        self.args = args
        self.interrupted = asyncio.Event()
        self.prompted = False

    async def run(self) -> int:
        host = urlsplit(self.url).hostname or ""
        try:
            ws = await connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {self.token}"},
                compression=None,
                open_timeout=OPEN_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
                max_size=MAX_FRAME,
                proxy=None if host in _LOOPBACK else True,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            _fail(f"cannot connect to {self.url}: {_reason(exc)}")
            return 1
        try:
            async with ws:
                return await self._session(ws)
        except ConnectionClosed as exc:
            if self.prompted:  # end the prompt's (or the answer's) line first
                _out("\n")
            _fail(closed_reason(exc))
            return 1

    async def _session(self, ws: ClientConnection) -> int:
        ready = await self._reply(ws)
        if ready.get("type") != "ready":
            return 1
        if self.args.session:
            start: dict[str, Any] = {"type": "session.resume", "session_id": self.args.session}
        else:
            start = {"type": "session.start", "game_id": self.args.game}
            start["language"] = self.args.language
            if self.args.provider:
                start["provider"] = self.args.provider
        await ws.send(json.dumps(start))
        frame = await self._reply(ws)
        if frame.get("type") != "session.ready":
            return 1
        session = frame["session"]
        for message in frame.get("history") or []:
            who = "you" if message.get("role") == "user" else "assistant"
            status = message.get("status")
            note = f" [{status}]" if status and status != "complete" else ""
            _out(f"{who}{note}: {message.get('content', '')}\n\n")
        _out(
            f"session {session['id']} ({session['provider']}, {session['model']}); "
            f"resume with --session {session['id']}. Ctrl-C stops an answer, Ctrl-D quits.\n"
        )
        return await self._prompt_loop(ws, _Lines(sys.stdin.fileno()))

    async def _reply(self, ws: ClientConnection) -> dict[str, Any]:
        """The next frame; an error frame is printed (the caller sees its type)."""
        async with asyncio.timeout(REPLY_TIMEOUT):
            frame: dict[str, Any] = json.loads(await ws.recv())
        if frame.get("type") == "error":
            _out(f"error: {frame.get('code')}: {frame.get('message')}\n")
        return frame

    async def _prompt_loop(self, ws: ClientConnection, lines: _Lines) -> int:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(signal.SIGINT, self.interrupted.set)
        try:
            while True:
                _out(PROMPT)
                self.prompted = True
                line = await self._line_or_frame(ws, lines)
                if line is _FRAME_SHOWN:
                    continue
                if line is None:  # Ctrl-D, or Ctrl-C at the prompt
                    _out("\n")
                    return 0
                assert isinstance(line, str)
                if not lines.tty:  # show piped questions as if typed
                    _out(line + "\n")
                if line.strip():
                    await ws.send(json.dumps({"type": "message", "text": line.strip()}))
                    await self._turn(ws)
        finally:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signal.SIGINT)

    async def _line_or_frame(self, ws: ClientConnection, lines: _Lines) -> object:
        """The next typed line (None: Ctrl-D or Ctrl-C), while the connection is watched:
        a close raises ``ConnectionClosed`` at once; a frame that comes meanwhile (a turn
        started from another connection on this session) is shown, and ``_FRAME_SHOWN``
        returned. Cancelling ``readline`` and ``recv`` loses nothing (both are safe)."""
        read = asyncio.ensure_future(lines.readline())
        frame = asyncio.ensure_future(ws.recv())
        stop = asyncio.ensure_future(self.interrupted.wait())
        try:
            await asyncio.wait({read, frame, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (read, frame, stop):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        self.interrupted.clear()
        if frame.done() and not frame.cancelled():
            data: dict[str, Any] = json.loads(frame.result())  # raises ConnectionClosed
            if read.done() and not read.cancelled():
                lines.push_back(read.result())
            _out("\n")
            if data.get("type") == "turn.started":
                _out("(a question asked from another connection to this session)\n")
                await self._turn(ws, started=True)
            elif data.get("type") == "error":
                _out(f"error: {data.get('code')}: {data.get('message')}\n")
            return _FRAME_SHOWN
        if read.done() and not read.cancelled():
            return read.result()
        return None

    async def _unless_interrupted(self, aw: Awaitable[T]) -> T | None:
        """``aw``'s result, or None (``aw`` cancelled) when Ctrl-C comes first."""
        work = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self.interrupted.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        self.interrupted.clear()
        return work.result() if not work.cancelled() else None

    async def _turn(self, ws: ClientConnection, *, started: bool = False) -> None:
        """Print one turn's frames until ``turn.completed`` (or an error that ends it)."""
        want_cancel = cancel_sent = False
        at_line_start = True
        while True:
            if started and want_cancel and not cancel_sent:
                await ws.send(json.dumps({"type": "cancel"}))
                cancel_sent = True
            raw = await self._unless_interrupted(ws.recv())
            if raw is None:  # Ctrl-C: cancel the turn (once it has started)
                want_cancel = True
                continue
            frame: dict[str, Any] = json.loads(raw)
            kind = frame.get("type")
            if kind == "turn.started":
                started = True
            elif kind == "turn.delta":
                text = str(frame.get("text", ""))
                _out(text)
                at_line_start = text.endswith("\n") if text else at_line_start
            elif kind == "error":
                _out(("" if at_line_start else "\n") + f"error: {frame.get('code')}: ")
                _out(f"{frame.get('message')}\n")
                at_line_start = True
                if not started:  # refused before a turn began (quota, flag, ...)
                    return
            elif kind == "turn.completed":
                _out(("" if at_line_start else "\n") + footer(frame))
                return


def footer(frame: dict[str, Any]) -> str:
    """The line under an answer: finish reason, who answered, tokens, cost, time;
    then the citations. Fields the server does not send are left out."""
    usage = frame.get("usage") or {}
    timing = frame.get("timing") or {}
    parts = [str(frame.get("finish_reason"))]
    who = " ".join(str(frame[k]) for k in ("provider", "model") if frame.get(k))
    if who:
        parts.append(who)
    tokens = f"{usage.get('input_tokens', 0)} tokens in, {usage.get('output_tokens', 0)} out"
    if usage.get("estimated"):
        tokens += " (estimated)"
    parts.append(tokens)
    if "cost_usd" in usage:
        parts.append(_cost(usage["cost_usd"], frame.get("provider")))
    parts.append(f"{(timing.get('total_ms') or 0) / 1000:.1f} s")
    lines = ["-- " + " · ".join(parts)]
    for c in frame.get("citations") or []:
        where = f"{c.get('title')} — {c['heading']}" if c.get("heading") else c.get("title")
        if c.get("page") is not None:
            where += f", page {c['page']}"
        url = f"  {c['url']}" if c.get("url") else ""
        lines.append(f"   [{c.get('passage_id')}] {where}{url}")
    return "\n".join(lines) + "\n"


def _cost(value: object, provider: object) -> str:
    """``cost_usd`` for a person: null is an unknown price, not free, except for the
    offline ``local`` provider, which has no price because it costs nothing."""
    if not isinstance(value, int | float):
        return "no cost (offline)" if provider == "local" else "cost unknown"
    if value == 0:
        return "$0"
    return f"${value:.4f}" if value >= 0.0001 else "< $0.0001"
