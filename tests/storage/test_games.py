"""Games in storage: create, update, conflicts, and paging/search/filter of the list."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from chat_server.errors import Conflict, InvalidInput, NotFound
from chat_server.storage import Database
from chat_server.storage.games import (
    create_game,
    get_game,
    get_game_by_bgg_id,
    list_games,
    update_game,
)
from chat_server.storage.pages import encode_cursor

from .conftest import WAIT


async def all_pages(
    db: Database,
    *,
    limit: int,
    statuses: tuple[str, ...] | None = None,
    search: str | None = None,
) -> list[list[dict[str, Any]]]:
    """Every page of the list, following ``next_cursor`` to the end."""
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        page, cursor = await list_games(
            db, statuses=statuses, search=search, limit=limit, cursor=cursor
        )
        pages.append(page)
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursor never ends"


async def names(db: Database, search: str, statuses: tuple[str, ...] | None = None) -> list[str]:
    page, _ = await list_games(db, statuses=statuses, search=search, limit=100, cursor=None)
    return [g["name"] for g in page]


async def test_create_and_get(db: Database) -> None:
    """A created game reads back with its fields and the default status `active`."""
    async with asyncio.timeout(WAIT):
        made = await create_game(
            db, {"name": "Azul", "bgg_id": 230802, "min_players": 2, "max_players": 4}
        )
        assert made["status"] == "active"
        assert made["id"]
        assert await get_game(db, made["id"]) == made
        assert await get_game_by_bgg_id(db, 230802) == made
        assert await get_game(db, "no-such-game") is None
        assert made["min_players"] == 2 and made["max_players"] == 4


async def test_duplicate_bgg_id_is_a_conflict(db: Database) -> None:
    """A second game with the same BoardGameGeek id is refused with GAME_EXISTS."""
    async with asyncio.timeout(WAIT):
        await create_game(db, {"name": "Azul", "bgg_id": 230802})
        with pytest.raises(Conflict) as info:
            await create_game(db, {"name": "Azul again", "bgg_id": 230802})
        assert info.value.error_code == "GAME_EXISTS"
        assert info.value.status_code == 409
        assert info.value.context == {"bgg_id": 230802}
        # Games without a BGG id never collide with each other.
        await create_game(db, {"name": "House game"})
        await create_game(db, {"name": "House game 2"})
        page, _ = await list_games(db, statuses=None, search=None, limit=10, cursor=None)
        assert [g["name"] for g in page] == ["Azul", "House game", "House game 2"]


async def test_update_changes_only_given_fields(db: Database) -> None:
    """An update changes name, status and section and leaves the rest alone."""
    async with asyncio.timeout(WAIT):
        made = await create_game(db, {"name": "Azul", "bgg_id": 1, "rating": 7.8})
        other = await create_game(db, {"name": "Brass", "bgg_id": 2})
        changed = await update_game(
            db, made["id"], {"name": "Azul (2nd ed.)", "status": "beta", "section": "family"}
        )
        assert changed["name"] == "Azul (2nd ed.)"
        assert changed["status"] == "beta"
        assert changed["section"] == "family"
        assert changed["rating"] == 7.8 and changed["bgg_id"] == 1
        assert await get_game(db, made["id"]) == changed
        with pytest.raises(Conflict) as info:
            await update_game(db, other["id"], {"bgg_id": 1})
        assert info.value.error_code == "GAME_EXISTS"
        with pytest.raises(NotFound) as missing:
            await update_game(db, "no-such-game", {"name": "x"})
        assert missing.value.error_code == "GAME_NOT_FOUND"


async def test_pages_cover_every_game_once_in_name_order(db: Database) -> None:
    """45 games (some sharing a name) page by 7 with no duplicate, gap or disorder."""
    async with asyncio.timeout(WAIT):
        wanted = [f"Game {i:02d}" for i in range(39)] + ["Same name"] * 6
        random.Random(7).shuffle(wanted)
        made = [await create_game(db, {"name": name}) for name in wanted]
        pages = await all_pages(db, limit=7)
        assert [len(p) for p in pages] == [7] * 6 + [3]
        seen = [g for page in pages for g in page]
        assert sorted(g["id"] for g in seen) == sorted(g["id"] for g in made)
        assert [g["name"] for g in seen] == sorted(wanted)
        # Same-name games are ordered by id, so a page boundary inside them is stable.
        same = [g["id"] for g in seen if g["name"] == "Same name"]
        assert same == sorted(same)
        # An exact multiple of the page size ends without an empty extra page.
        assert [len(p) for p in await all_pages(db, limit=15)] == [15, 15, 15]


async def test_a_bad_cursor_is_invalid_input(db: Database) -> None:
    """A cursor that was not handed out (or holds NUL) is refused, not a server error."""
    async with asyncio.timeout(WAIT):
        forged_nul = encode_cursor("a\x00", "b")  # Postgres cannot even compare with it
        for cursor in ("not-base64!!", "WyJhIl0", "e30", forged_nul):
            with pytest.raises(InvalidInput) as info:
                await list_games(db, statuses=None, search=None, limit=5, cursor=cursor)
            assert info.value.error_code == "INVALID_CURSOR"


async def test_search_ignores_case(db: Database) -> None:
    """Search finds a name whatever the case, accented capitals included."""
    async with asyncio.timeout(WAIT):
        for i, name in enumerate(["Ticket to Ride", "Évolution", "ÆON'S END", "Catan"]):
            await create_game(db, {"name": name, "bgg_id": i + 1})
        assert await names(db, "TICKET") == ["Ticket to Ride"]
        assert await names(db, "to ri") == ["Ticket to Ride"]
        assert await names(db, "évo") == ["Évolution"]
        assert await names(db, "ÉVOL") == ["Évolution"]
        assert await names(db, "æon's") == ["ÆON'S END"]
        assert await names(db, "zzz") == []


async def test_search_treats_like_wildcards_literally(db: Database) -> None:
    """`%`, `_` and `\\` in a search match themselves, not any text."""
    async with asyncio.timeout(WAIT):
        for i, name in enumerate(
            ["100% Orange Juice", "1000 Orange Juices", "Snake_Oil", "Snake Oil", r"Back\slash"]
        ):
            await create_game(db, {"name": name, "bgg_id": i + 1})
        assert await names(db, "100%") == ["100% Orange Juice"]
        assert await names(db, "%") == ["100% Orange Juice"]
        assert await names(db, "e_o") == ["Snake_Oil"]
        assert await names(db, "_") == ["Snake_Oil"]
        assert await names(db, "\\") == [r"Back\slash"]
        assert await names(db, "\\s") == [r"Back\slash"]
        assert await names(db, "%'; DROP TABLE games; --") == []
        assert len(await names(db, "")) == 5


async def test_status_filter(db: Database) -> None:
    """The statuses filter keeps only those statuses; None means every game."""
    async with asyncio.timeout(WAIT):
        for i, status in enumerate(["active", "beta", "hidden", "active"]):
            await create_game(db, {"name": f"{status} {i}", "bgg_id": i + 1, "status": status})
        assert await names(db, "", ("active",)) == ["active 0", "active 3"]
        assert await names(db, "", ("active", "beta")) == ["active 0", "active 3", "beta 1"]
        assert await names(db, "", ("hidden",)) == ["hidden 2"]
        assert await names(db, "", ()) == []
        assert len(await names(db, "")) == 4
        assert await names(db, "3", ("active", "hidden")) == ["active 3"]


async def test_paging_with_a_search_and_a_filter(db: Database) -> None:
    """Paging follows the same search and filter from page to page."""
    async with asyncio.timeout(WAIT):
        for i in range(20):
            status = "hidden" if i % 4 == 0 else "active"
            await create_game(db, {"name": f"Deck {i:02d}", "status": status})
            await create_game(db, {"name": f"Dice {i:02d}"})
        pages = await all_pages(db, limit=4, statuses=("active",), search="DECK")
        got = [g["name"] for page in pages for g in page]
        assert got == [f"Deck {i:02d}" for i in range(20) if i % 4]
