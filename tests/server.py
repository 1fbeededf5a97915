"""A real uvicorn server of the app on a loopback port, in a background thread.

Like httpx's own test suite: the app runs with the same uvicorn settings as
``chat-server serve`` (frame size limit, no compression, keepalive pings).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from chat_server.app import create_app
from chat_server.auth import mint_token
from chat_server.config import Settings, load_settings
from chat_server.services import Services
from chat_server.serving import ChatServer, uvicorn_config

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"


def make_settings(tmp_path: Any, **overrides: Any) -> Settings:
    # Explicit Nones: the outer environment (CI sets DATABASE_URL and REDIS_URL for the
    # fixtures) must not leak into a test server's configuration.
    values: dict[str, Any] = {
        "database_url": None,
        "redis_url": None,
        "openai_api_key": None,
        "openai_base_url": None,
        "anthropic_api_key": None,
        "gemini_api_key": None,
        "default_provider": None,
        "provider_fallback": "",
        "supabase_url": None,
        "supabase_jwks_url": None,
        "environment": "dev",
        "chat_data_dir": tmp_path,
        "supabase_jwt_secret": SECRET,
        "local_token_delay": 0.0,
        "ws_resume_grace": 0.0,
        "log_level": "warning",
    }
    values.update(overrides)
    return load_settings(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """``overrides``: uvicorn settings over those of ``chat-server serve`` (e.g. ``http``)."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        self.port = free_port()
        self.app = create_app(settings)
        config = uvicorn_config(
            self.app, settings, host="127.0.0.1", port=self.port, log_level="warning", **overrides
        )
        self.server = ChatServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.server_loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's own event loop (to read its state)."""
        assert self.server_loop is not None, "the server is not running"
        return asyncio.run_coroutine_threadsafe(coro, self.server_loop).result(timeout)

    def token(self, user: str = "user-1", role: str | None = "basic", ttl: int = 3600) -> str:
        secret = self.settings.supabase_jwt_secret
        assert secret
        return mint_token(secret=secret, user_id=user, role=role, ttl=ttl)

    def start(self) -> None:
        original = self.app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            self.server_loop = asyncio.get_running_loop()
            async with original(app) as state:
                yield state

        self.app.router.lifespan_context = lifespan
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start within 20 s")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@contextlib.contextmanager
def running_server(settings: Settings, **overrides: Any) -> Iterator[RunningServer]:
    server = RunningServer(settings, **overrides)
    server.start()
    try:
        yield server
    finally:
        server.stop()
