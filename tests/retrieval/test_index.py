"""Each game's in-memory index follows its documents and glossary, on both databases,
with nothing to call when they change; errata are linked to the rules they correct."""

from __future__ import annotations

import asyncio
from typing import Any

from chat_server.retrieval.index import Indexes
from chat_server.storage import Database
from chat_server.storage.documents import add_document, retrieve
from chat_server.storage.games import create_game, update_game

from .conftest import WAIT

RULES = """\
# Ferry Rules

## Boarding

A passenger boards the Skiff at the quay by paying one shell to the ferryman.

## Tides

At high tide the Skiff may cross the bay; at low tide it stays moored.

## Cargo

The Skiff carries at most three crates besides its passengers.
"""

ERRATA = """\
# Errata

## Cargo, corrected

Correction to Cargo: the limit is four crates, not three.
"""


async def ask(db: Database, game_id: str, question: str, indexes: Indexes) -> list[str | None]:
    found = await retrieve(
        db, game_id=game_id, language="en", question=question, limit=3, indexes=indexes
    )
    return [p.heading for p in found.passages]


async def add(db: Database, game_id: str, content: str, kind: str) -> None:
    await add_document(
        db, game_id=game_id, language="en", title=kind, content=content, fmt="markdown", kind=kind
    )


async def test_documents_and_glossary_reach_the_next_question(db: Database) -> None:
    """A glossary edit and an errata added later are used by the next question once the
    game's signature is checked again; the correction comes above its rule."""
    indexes = Indexes(check_every=0.0)
    async with asyncio.timeout(WAIT):
        game = await create_game(db, {"name": "Ferry"})
        await add(db, game["id"], RULES, "rulebook")
        before = await ask(db, game["id"], "how much can the boat hold", indexes)
        await update_game(db, game["id"], {"details": {"glossary": {"Skiff": ["boat"]}}})
        with_glossary = await ask(db, game["id"], "how many crates can the boat hold", indexes)
        await add(db, game["id"], ERRATA, "errata")
        corrected = await ask(db, game["id"], "how many crates can the boat hold", indexes)
    assert "Cargo" in with_glossary
    assert corrected[:2] == ["Cargo, corrected", "Cargo"], corrected
    assert "Cargo, corrected" not in before


async def test_a_fresh_index_is_not_read_again_within_its_check_period(
    db: Database,
) -> None:
    """Within the check period a turn uses the index it has (no statement); a document
    added meanwhile grounds questions once the period is over."""
    patient = Indexes(check_every=3600.0)
    eager = Indexes(check_every=0.0)
    async with asyncio.timeout(WAIT):
        game: dict[str, Any] = await create_game(db, {"name": "Ferry"})
        await add(db, game["id"], RULES, "rulebook")
        await ask(db, game["id"], "tides", patient)
        await add(db, game["id"], ERRATA, "errata")
        stale = await ask(db, game["id"], "crates limit cargo", patient)
        fresh = await ask(db, game["id"], "crates limit cargo", eager)
    assert "Cargo, corrected" not in stale
    assert fresh[0] == "Cargo, corrected"
