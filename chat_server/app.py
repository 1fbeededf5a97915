"""``create_app()``: the one place that assembles the app.

Routes (REST from ``http_api``, the WebSocket at ``/ws/chat``), error handlers and the
lifespan that makes every client. FastAPI is used for the REST side (validation,
dependencies, the OpenAPI schema); the WebSocket goes around it (``ChatApp``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from http_api import api_router
from http_api.body_limit import BodyLimit
from http_api.documents import UPLOAD_PATHS
from http_api.errors import install_error_handlers
from http_api.guards import InputGuard, SafeJSONResponse

from . import __version__
from .config import Settings, load_settings
from .logs import RequestContext, quiet_client_garbage
from .services import build_services, close_services, with_local_secret
from .transports.ai_sdk_ws import AI_SDK_WS_PATH, ai_sdk_endpoint
from .ws import chat_endpoint

__all__ = ["CHAT_PATH", "ChatApp", "create_app"]

log = logging.getLogger(__name__)
CHAT_PATH = "/ws/chat"


class ChatApp(FastAPI):
    """FastAPI for everything but ``/ws/chat`` and ``/ws/ai-sdk``, whose WebSockets go
    straight to their endpoints (with a request id for their log lines, as every
    request has).

    A WebSocket lives for hours and every ASGI layer it passes keeps a frame alive
    for that long: FastAPI's and Starlette's stack (error, telemetry, body-limit and
    exception middleware, the router) held about 9 KB per connection, and did nothing
    for a WebSocket that the endpoint does not do itself.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] in (
            CHAT_PATH,
            scope.get("root_path", "") + CHAT_PATH,  # behind a proxy's path prefix
        ):
            scope["app"] = self  # the endpoint finds the services on app.state
            await _CHAT(scope, receive, send)
            return
        if scope["type"] == "websocket" and scope["path"] in (
            AI_SDK_WS_PATH,
            scope.get("root_path", "") + AI_SDK_WS_PATH,
        ):
            scope["app"] = self
            await _AI_SDK(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _chat(scope: Scope, receive: Receive, send: Send) -> None:
    await chat_endpoint(WebSocket(scope, receive, send))


_CHAT = RequestContext(_chat)


async def _ai_sdk(scope: Scope, receive: Receive, send: Send) -> None:
    await ai_sdk_endpoint(WebSocket(scope, receive, send))


_AI_SDK = RequestContext(_ai_sdk)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; clients are made when the lifespan starts, not here."""
    settings = with_local_secret(settings or load_settings())
    quiet_client_garbage()  # also when uvicorn is run without configure_logging

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings)
        app.state.services = services
        try:
            yield
        finally:
            await close_services(services)

    app = ChatApp(
        title="chat-server",
        version=__version__,
        description="Streaming chat backend: REST side. The WebSocket protocol at "
        "`/ws/chat` is described in docs/protocol.md.",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
        # /docs and /redoc are http_api.docs_pages: the same pages, no CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(InputGuard)  # inside the body limit: reads at most that much
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.http_max_body_bytes,
        upload_paths=UPLOAD_PATHS,
        # the file, plus the form's other fields and boundaries
        upload_max_bytes=settings.document_max_bytes + 64 * 1024,
    )
    app.add_middleware(RequestContext)  # outermost: a request id on every log line
    app.include_router(api_router)
    return app
