"""Storage fixtures: a migrated ``Database`` on SQLite and on Postgres, and a game in it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chat_server.storage import Database
from chat_server.storage.games import create_game
from chat_server.storage.migrate import upgrade

WAIT = 30.0  # the most any one test waits on its awaits


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A database at the latest schema, disposed after the test."""
    database = Database(database_url, pool_size=4)
    try:
        async with asyncio.timeout(WAIT):
            await upgrade(database)
        yield database
    finally:
        async with asyncio.timeout(WAIT):
            await database.dispose()


@pytest.fixture
async def game(db: Database) -> dict[str, Any]:
    """One active game to hang documents, sessions and usage on."""
    async with asyncio.timeout(WAIT):
        return await create_game(db, {"name": "Catan", "bgg_id": 13})
