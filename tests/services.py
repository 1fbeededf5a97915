"""Where the tests find real Postgres and Redis, and what happens when one is missing.

On a developer laptop a missing service skips the tests that need it, with the reason;
under ``CI`` (any non-empty value) it fails them instead.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from urllib.parse import urlsplit

import pytest

# Only the TEST_ variables: the server's own DATABASE_URL and REDIS_URL may name a
# production project in the same shell, and the tests create and drop databases and
# empty a Redis database.
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL") or "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"

REDIS_TEST_DB = os.environ.get("TEST_REDIS_DB", "9")


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def missing(what: str, reason: str) -> None:
    """Skip (laptop) or fail (CI) because a service is missing."""
    message = f"{what} is not reachable: {reason}"
    if in_ci():
        pytest.fail(message + " (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


def reachable(url: str, default_port: int) -> str | None:
    """None when a TCP connection to the URL's host works, else the reason."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc}"


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return parts._replace(path="/" + name).geturl()


async def create_database(admin_url: str) -> str:
    """Create a fresh, uniquely named Postgres database; return its URL."""
    import asyncpg

    name = "chat_test_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    import asyncpg

    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(_asyncpg_dsn(admin_url), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]
