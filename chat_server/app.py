"""``create_app()``: the one place that assembles the app.

Routes (REST from ``http_api``, the WebSocket at ``/ws/chat``), error handlers and the
lifespan that makes every client. FastAPI is used for the REST side (validation,
dependencies, the OpenAPI schema); the WebSocket is a plain Starlette route.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import WebSocketRoute

from http_api import api_router
from http_api.body_limit import BodyLimit
from http_api.errors import install_error_handlers

from . import __version__
from .config import Settings, load_settings
from .logs import RequestContext
from .services import build_services, close_services, with_local_secret
from .ws import chat_endpoint

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app; clients are made when the lifespan starts, not here."""
    settings = with_local_secret(settings or load_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(settings)
        app.state.services = services
        try:
            yield
        finally:
            await close_services(services)

    app = FastAPI(
        title="chat-server",
        version=__version__,
        description="Streaming chat backend: REST side. The WebSocket protocol at "
        "`/ws/chat` is described in docs/protocol.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.http_max_body_bytes)
    app.add_middleware(RequestContext)  # outermost: a request id on every log line
    app.include_router(api_router)
    app.router.routes.append(WebSocketRoute("/ws/chat", chat_endpoint))
    return app
