"""The game's rulebook languages (which decide whether and in what language a turn is
grounded): read once for a burst of turns that ask at the same moment, remembered
until a document changes, and never kept from a read that a change overtook."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from tests.http_api.support import client, create_game
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

RULES = "# Setup\n\nEach player takes five cards and two gold coins before the first round.\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


def add_rulebook(server: RunningServer, game_id: str, language: str) -> None:
    with client(server, "dev-1", "developer") as staff:
        body = {"language": language, "title": "Rules", "content": RULES, "format": "markdown"}
        added = staff.post(f"/admin/games/{game_id}/documents", json=body)
        assert added.status_code == 201, added.text


@pytest.fixture
def game(server: RunningServer) -> dict[str, Any]:
    with client(server, "dev-1", "developer") as staff:
        made = create_game(staff, name="Coins")
    add_rulebook(server, made["id"], "en")
    return made


@pytest.fixture
def language_reads(server: RunningServer) -> list[str]:
    """Every statement that reads a game's rulebook languages, as the server runs it."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "DISTINCT document_passages.language" in statement:
            seen.append(statement)

    engine = server.services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


async def ask(server: RunningServer, user: str, game_id: str) -> dict[str, Any]:
    async with asyncio.timeout(30), ws_client(server.ws_url, server.token(user)) as ws:
        await ws.start(game_id)
        frames = await ws.ask("How many gold coins does each player take?")
    return frames[-1]


async def test_turns_read_the_languages_once_until_a_rulebook_is_added(
    server: RunningServer, game: dict[str, Any], language_reads: list[str]
) -> None:
    """Twelve players asking are all grounded on the rulebook, with one read of its
    languages; a rulebook added makes the next turn read them again."""
    answers = await asyncio.gather(*(ask(server, f"p{i}", game["id"]) for i in range(12)))
    assert all(a["type"] == "turn.completed" and a["citations"] for a in answers), answers
    assert len(language_reads) == 1
    add_rulebook(server, game["id"], "fr")
    last = await ask(server, "p1", game["id"])
    assert last["type"] == "turn.completed" and last["citations"]
    assert len(language_reads) == 2


async def test_turns_that_miss_together_share_one_read(
    server: RunningServer, game: dict[str, Any], language_reads: list[str]
) -> None:
    """Fifty turns of one game that need its languages at the same moment (a burst right
    after a rulebook changed) wait for one read; one of them cancelled does not fail
    the others."""
    chat = server.services.chat

    async def burst() -> list[Any]:
        chat.rulebook_added(game["id"])
        waiting = [asyncio.ensure_future(chat._game_languages(game["id"])) for _ in range(50)]
        await asyncio.sleep(0)
        waiting[0].cancel()
        return await asyncio.gather(*waiting[1:])

    assert server.call(burst()) == [frozenset({"en"})] * 49
    assert len(language_reads) == 1


async def test_a_read_overtaken_by_a_document_change_is_not_kept(
    server: RunningServer, game: dict[str, Any], language_reads: list[str]
) -> None:
    """A document changes while the languages are being read: that read's answer may be
    old, so the next turn reads them again rather than trust it."""
    chat = server.services.chat

    async def overtaken() -> None:
        reading = asyncio.ensure_future(chat._game_languages(game["id"]))
        await asyncio.sleep(0)  # the read is under way
        chat.rulebook_added(game["id"])
        assert await reading == frozenset({"en"})
        assert await chat._game_languages(game["id"]) == frozenset({"en"})
        assert await chat._game_languages(game["id"]) == frozenset({"en"})

    server.call(overtaken())
    assert len(language_reads) == 2
