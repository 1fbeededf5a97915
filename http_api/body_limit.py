"""Refuse request bodies over a size limit before reading them into memory (413)."""

from __future__ import annotations

import json
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit"]


class BodyLimit:
    """ASGI middleware: a declared or streamed HTTP body over ``max_bytes`` gets 413.

    A ``multipart/form-data`` body to a path matching ``upload_paths`` may be up to
    ``upload_max_bytes`` instead (a document upload, whose handler enforces its own,
    exact limit on the file); a JSON body there keeps ``max_bytes``."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        upload_paths: re.Pattern[str] | None = None,
        upload_max_bytes: int = 0,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_paths = upload_paths
        self.upload_max_bytes = max(upload_max_bytes, max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.upload_paths is not None and self.upload_paths.fullmatch(scope["path"]):
            content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
            if content_type.lower().startswith(b"multipart/form-data"):
                await _Limited(self.app, self.upload_max_bytes)(scope, receive, send)
                return
        await _Limited(self.app, self.max_bytes)(scope, receive, send)


class _Limited:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        received = 0
        refused = False

        async def limited_receive() -> Message:
            # Past the limit, the app sees the body end there; whatever it answers is
            # replaced by the 413 below.
            nonlocal received, refused
            if refused:
                return {"type": "http.request", "body": b"", "more_body": False}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        replaced = False

        async def guarded_send(message: Message) -> None:
            nonlocal replaced
            if refused:
                if not replaced:
                    replaced = True
                    await self._refuse(send)
                return
            await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {
                "detail": f"request body larger than {self.max_bytes} bytes",
                "error_code": "PAYLOAD_TOO_LARGE",
                "context": {"max_bytes": self.max_bytes},
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-content-type-options", b"nosniff"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
