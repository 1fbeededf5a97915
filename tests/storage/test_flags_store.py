"""Feature flags in storage: one row per feature, scope, role and environment."""

from __future__ import annotations

import asyncio
from typing import Any

from chat_server.flags import Flag
from chat_server.storage import Database
from chat_server.storage.flags import delete_flag, list_flags, upsert_flag

from .conftest import WAIT


async def put(db: Database, **changes: Any) -> Flag:
    values: dict[str, Any] = {
        "feature_key": "chat",
        "scope_type": "global",
        "scope_id": None,
        "role": None,
        "environment": "prod",
        "enabled": True,
        "metadata": {},
    }
    values.update(changes)
    return await upsert_flag(db, **values)


async def test_same_key_updates_the_same_row(db: Database) -> None:
    """Putting a flag twice with the same key changes it in place, keeping its id."""
    async with asyncio.timeout(WAIT):
        first = await put(db, enabled=True, metadata={"daily_limit": 5})
        second = await put(db, enabled=False, metadata={"daily_limit": 2, "note": "é"})
        stored = await list_flags(db)
    assert second.id == first.id
    assert stored == [second]
    assert second.enabled is False
    assert second.metadata == {"daily_limit": 2, "note": "é"}


async def test_no_role_and_no_scope_id_come_back_as_none(db: Database) -> None:
    """A flag for every role with no scope id reads back with None, not ''."""
    async with asyncio.timeout(WAIT):
        made = await put(db)
        (stored,) = await list_flags(db)
    assert made.role is None and made.scope_id is None
    assert stored == made
    assert stored == Flag(
        id=made.id,
        feature_key="chat",
        scope_type="global",
        scope_id=None,
        role=None,
        environment="prod",
        enabled=True,
        metadata={},
    )


async def test_each_part_of_the_key_makes_a_separate_flag(db: Database) -> None:
    """Another environment, role, scope or feature is another flag; a repeat is not."""
    async with asyncio.timeout(WAIT):
        base = await put(db)
        others = [
            await put(db, environment="staging"),
            await put(db, role="premium"),
            await put(db, scope_type="game", scope_id="game-1"),
            await put(db, scope_type="game", scope_id="game-2"),
            await put(db, scope_type="game", scope_id="game-1", role="premium"),
            await put(db, feature_key="voice"),
        ]
        repeat = await put(db, scope_type="game", scope_id="game-1", enabled=False)
        everything = await list_flags(db)
        prod = await list_flags(db, environment="prod")
        staging = await list_flags(db, environment="staging")
    ids = [base.id] + [f.id for f in others]
    assert len(set(ids)) == 7
    assert repeat.id == others[2].id and repeat.enabled is False
    assert sorted(f.id for f in everything) == sorted(ids)
    assert [f.id for f in staging] == [others[0].id]
    assert {f.id for f in prod} == set(ids) - {others[0].id}
    assert [f.feature_key for f in everything] == sorted(f.feature_key for f in everything)
    game_flag = next(f for f in everything if f.id == others[4].id)
    assert (game_flag.scope_id, game_flag.role) == ("game-1", "premium")


async def test_delete(db: Database) -> None:
    """Deleting a flag removes it once; deleting it again reports nothing deleted."""
    async with asyncio.timeout(WAIT):
        keep = await put(db, environment="dev")
        gone = await put(db)
        assert await delete_flag(db, gone.id) is True
        assert await delete_flag(db, gone.id) is False
        assert await delete_flag(db, "no-such-flag") is False
        assert await list_flags(db) == [keep]
        # The key is free again: a new flag gets a new id.
        back = await put(db)
    assert back.id != gone.id


async def test_concurrent_puts_of_one_key_leave_one_row(db: Database) -> None:
    """Administrators saving the same flag at once end with one row, one of their values."""
    async with asyncio.timeout(WAIT):
        results = await asyncio.gather(*(put(db, metadata={"daily_limit": n}) for n in range(6)))
        stored = await list_flags(db)
    assert len({f.id for f in results}) == 1
    assert len(stored) == 1
    assert stored[0].metadata["daily_limit"] in range(6)
