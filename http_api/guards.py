"""What every HTTP request and response passes through, whatever its route.

``InputGuard`` (ASGI middleware) reads a JSON body before FastAPI does and refuses,
with the flat 422 body and without recursion, one nested deeper than ``MAX_DEPTH``
levels or holding a NUL or a lone surrogate in any string or key (``\\u0000``,
``\\ud800``: legal JSON that no database stores and no UTF-8 encoder writes). So no
route, model or validator ever sees such a body, and nothing of it is stored. It also
adds ``X-Content-Type-Options: nosniff`` to every response.

``SafeJSONResponse`` is the app's response class: a stored row holding a lone
surrogate (written before these checks existed, or through SQLite's JSON) is sent with
U+FFFD in its place instead of failing the read.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat_server.text import clean, unstorable_value

__all__ = ["MAX_DEPTH", "InputGuard", "SafeJSONResponse", "json_problem"]

MAX_DEPTH = 32
NOSNIFF = (b"x-content-type-options", b"nosniff")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def json_problem(body: bytes) -> str | None:
    """Why this JSON body is refused (too deep, NUL, lone surrogate), or None.

    Depth is counted on the brackets outside strings, in a loop: no recursion, however
    deep. Strings are looked at only when the body holds a suspect ``\\u`` escape.
    """
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        depth = 0
        for bracket in _BRACKET.findall(_STRING.sub(b'""', body)):
            if bracket in (b"[", b"{"):
                depth += 1
                if depth > MAX_DEPTH:
                    return f"JSON nested deeper than {MAX_DEPTH} levels"
            else:
                depth -= 1
    if _SUSPECT_ESCAPE.search(body) is None:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own parsing answers 422
    if unstorable_value(data):
        return "strings must not contain NUL characters or lone surrogates"
    return None


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            kind = value.split(b";", 1)[0].strip().lower()
            return kind == b"application/json" or kind.endswith(b"+json")
    return False


class InputGuard:
    """ASGI middleware: JSON bodies checked before the app reads them; nosniff on all."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append(NOSNIFF)
                message = {**message, "headers": headers}
            await send(message)

        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") or not _is_json(scope):
            await self.app(scope, receive, send_nosniff)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: nobody to answer
                return
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        problem = json_problem(body)
        if problem is not None:
            await _refuse(send_nosniff, problem)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send_nosniff)


async def _refuse(send: Send, problem: str) -> None:
    error = {"loc": ["body"], "msg": problem, "type": "body_unstorable"}
    payload = json.dumps(
        {
            "detail": f"body: {problem}",
            "error_code": "VALIDATION_ERROR",
            "context": {"errors": [error]},
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 422,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class SafeJSONResponse(JSONResponse):
    """JSON as FastAPI writes it, with any lone surrogate as U+FFFD (never a 500)."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(
            content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
        )
        return (text if text.isascii() else clean(text)).encode("utf-8")
