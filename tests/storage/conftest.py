"""Storage fixtures: a game in the migrated database (``db``, from tests/conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat_server.storage import Database
from chat_server.storage.games import create_game

WAIT = 30.0  # the most any one test waits on its awaits


@pytest.fixture
async def game(db: Database) -> dict[str, Any]:
    """One active game to hang documents, sessions and usage on."""
    async with asyncio.timeout(WAIT):
        return await create_game(db, {"name": "Catan", "bgg_id": 13})
