"""Retrieval fixtures: the Hollowdeep rulebook, errata and FAQ, with its glossary, in the
migrated database (``db``, from tests/conftest.py: SQLite and Postgres)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat_server.storage import Database
from chat_server.storage.games import create_game, update_game

from .evaluation import glossary, load

WAIT = 120.0  # loading and asking the whole evaluation set


@pytest.fixture
async def hollowdeep(db: Database) -> dict[str, Any]:
    """The Hollowdeep game with its three documents and no glossary."""
    async with asyncio.timeout(WAIT):
        game = await create_game(db, {"name": "Hollowdeep"})
        await load(db, game["id"])
    return game


@pytest.fixture
async def with_glossary(db: Database, hollowdeep: dict[str, Any]) -> dict[str, Any]:
    """Hollowdeep with the glossary an admin keeps in its details."""
    async with asyncio.timeout(WAIT):
        return await update_game(db, hollowdeep["id"], {"details": {"glossary": glossary()}})
