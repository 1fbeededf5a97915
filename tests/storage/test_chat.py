"""Chat sessions and messages in storage: sessions newest first, a turn's two writes,
history order, and closing the answers of dead instances."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select, update

from chat_server.errors import InvalidInput, Unavailable
from chat_server.prices import load_prices
from chat_server.providers.base import ChatMessage, ProviderRequest, Usage
from chat_server.sessions.turn import Turn
from chat_server.storage import Database
from chat_server.storage.chat import (
    TurnRecord,
    begin_turn,
    create_session,
    fail_stale_turns,
    finish_turn,
    get_session,
    history,
    list_sessions,
    session_with_history,
)
from chat_server.storage.games import create_game
from chat_server.storage.ids import new_id
from chat_server.storage.migrate import upgrade
from chat_server.storage.schema import chat_messages, usage_events

from .conftest import WAIT

USER = "user-1"


async def new_session(db: Database, game_id: str, user_id: str = USER) -> dict[str, Any]:
    return await create_session(
        db, user_id=user_id, game_id=game_id, language="en", provider="local", model="rules"
    )


async def start_turn(
    db: Database, session_id: str, text: str, instance_id: str = "i-1"
) -> tuple[str, str]:
    """Begin a turn; return its id and the assistant message id."""
    turn_id = new_id()
    _user, assistant_id = await begin_turn(
        db, session_id=session_id, turn_id=turn_id, text=text, instance_id=instance_id
    )
    return turn_id, assistant_id


def record(session: dict[str, Any], turn_id: str, message_id: str, **changes: Any) -> TurnRecord:
    base = TurnRecord(
        message_id=message_id,
        turn_id=turn_id,
        session_id=session["id"],
        user_id=session["user_id"],
        game_id=session["game_id"],
        provider="local",
        model="rules",
        content="Roll both dice.",
        status="complete",
        finish_reason="stop",
        citations=[{"passage_id": "p1", "quote": "dice"}],
        input_tokens=120,
        output_tokens=8,
        cache_read_tokens=3,
        cache_creation_tokens=1,
        first_token_ms=40,
        total_ms=90,
        error_code=None,
    )
    return replace(base, **changes)


async def usage_rows(db: Database) -> list[Any]:
    async with db.read() as conn:
        return list((await conn.execute(select(usage_events).order_by(usage_events.c.id))).all())


async def age_messages(db: Database, message_ids: list[str], when: datetime) -> None:
    """Pretend these messages were last touched at ``when``."""
    async with db.write() as conn:
        await conn.execute(
            update(chat_messages)
            .where(chat_messages.c.id.in_(message_ids))
            .values(updated_at=when, created_at=when)
        )


async def test_create_and_get_session(db: Database, game: dict[str, Any]) -> None:
    """A created session reads back the same, with a UTC creation time."""
    async with asyncio.timeout(WAIT):
        made = await new_session(db, game["id"])
        got = await get_session(db, made["id"])
        missing = await get_session(db, "no-such-session")
    assert got == made
    assert got["created_at"].utcoffset() == timedelta(0)
    assert (got["user_id"], got["game_id"], got["language"]) == (USER, game["id"], "en")
    assert (got["provider"], got["model"]) == ("local", "rules")
    assert missing is None


async def test_sessions_are_listed_newest_first_by_page(db: Database, game: dict[str, Any]) -> None:
    """A user's sessions page newest first, per game on request, never another user's."""
    async with asyncio.timeout(WAIT):
        other_game = await create_game(db, {"name": "Azul"})
        mine = []
        for i in range(8):
            mine.append(await new_session(db, game["id"] if i % 2 else other_game["id"]))
            await new_session(db, game["id"], user_id="user-2")
        pages, cursor = [], None
        while True:
            page, cursor = await list_sessions(
                db, user_id=USER, game_id=None, limit=3, cursor=cursor
            )
            pages.append([s["id"] for s in page])
            if cursor is None:
                break
        only_game, end = await list_sessions(
            db, user_id=USER, game_id=game["id"], limit=10, cursor=None
        )
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [sid for p in pages for sid in p] == [s["id"] for s in reversed(mine)]
    assert [s["id"] for s in only_game] == [
        s["id"] for s in reversed(mine) if s["game_id"] == game["id"]
    ]
    assert end is None


async def test_begin_turn_stores_question_and_placeholder(
    db: Database, game: dict[str, Any]
) -> None:
    """Starting a turn stores the question (complete) and an empty streaming answer."""
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        turn_id = new_id()
        user_message, assistant_id = await begin_turn(
            db, session_id=session["id"], turn_id=turn_id, text="How do I win?", instance_id="i-1"
        )
        messages = await history(db, session["id"])
        usage = await usage_rows(db)
    assert [m["id"] for m in messages] == [user_message["id"], assistant_id]
    question, answer = messages
    assert question == user_message
    assert (question["role"], question["status"], question["content"]) == (
        "user",
        "complete",
        "How do I win?",
    )
    assert (answer["role"], answer["status"], answer["content"]) == ("assistant", "streaming", "")
    assert answer["citations"] == [] and answer["finish_reason"] is None
    assert question["turn_id"] == answer["turn_id"] == turn_id
    assert usage == []


async def test_finish_turn_stores_the_answer_and_one_usage_row(
    db: Database, game: dict[str, Any]
) -> None:
    """Finishing a turn stores the final answer and exactly one usage row for it."""
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        turn_id, assistant_id = await start_turn(db, session["id"], "How do I win?")
        await finish_turn(db, record(session, turn_id, assistant_id))
        messages = await history(db, session["id"])
        usage = await usage_rows(db)
    answer = messages[-1]
    assert answer["id"] == assistant_id
    assert (answer["content"], answer["status"], answer["finish_reason"]) == (
        "Roll both dice.",
        "complete",
        "stop",
    )
    assert answer["citations"] == [{"passage_id": "p1", "quote": "dice"}]
    assert len(usage) == 1
    row = usage[0]
    assert (row.turn_id, row.session_id, row.user_id, row.game_id) == (
        turn_id,
        session["id"],
        USER,
        game["id"],
    )
    assert (row.provider, row.model, row.finish_reason, row.error_code) == (
        "local",
        "rules",
        "stop",
        None,
    )
    assert (row.input_tokens, row.output_tokens, row.cache_read_tokens) == (120, 8, 3)
    assert (row.cache_creation_tokens, row.first_token_ms, row.total_ms) == (1, 40, 90)


async def test_a_turn_is_stored_in_the_transaction_pooler_mode(postgres_url: str) -> None:
    """With the prepared-statement cache off (Supabase's transaction pooler), a turn's
    one-statement writes run in transactions and store the same rows, and leave no
    prepared statement on the server connection."""
    db = Database(postgres_url, prepared_statement_cache=False)
    try:
        async with asyncio.timeout(WAIT):
            await upgrade(db)
            game = await create_game(db, {"name": "Catan"})
            session = await new_session(db, game["id"])
            turn_id, assistant_id = await start_turn(db, session["id"], "How do I win?")
            await finish_turn(db, record(session, turn_id, assistant_id))
            messages = await history(db, session["id"])
            usage = await usage_rows(db)
            async with db.driver() as driver:  # what a pooler's next client would find
                kept = await driver.fetchval("SELECT count(*) FROM pg_prepared_statements")
    finally:
        await db.dispose()
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", "How do I win?", "complete"),
        ("assistant", "Roll both dice.", "complete"),
    ]
    assert [(u.turn_id, u.output_tokens) for u in usage] == [(turn_id, 8)]
    assert kept == 0


@pytest.mark.parametrize("statement_cache", [True, False])
async def test_a_question_cut_by_the_deadline_is_never_stored(
    postgres_url: str, statement_cache: bool
) -> None:
    """The question's write waits on a locked table past the deadline: the turn fails
    as `Unavailable`, and once the lock is gone nothing of it is stored (the server
    cancelled the statement before the failure was reported); the pool's one
    connection then stores the next turn. In autocommit and behind a pooler."""
    import asyncpg

    db = Database(postgres_url, pool_size=1, timeout=1.0, prepared_statement_cache=statement_cache)
    locker = await asyncpg.connect(postgres_url.replace("+asyncpg", ""))
    try:
        async with asyncio.timeout(WAIT):
            await upgrade(db)
            game = await create_game(db, {"name": "Catan"})
            session = await new_session(db, game["id"])
            await start_turn(db, session["id"], "Q1")
            async with locker.transaction():
                await locker.execute("LOCK TABLE chat_messages IN EXCLUSIVE MODE")
                with pytest.raises(Unavailable):
                    await start_turn(db, session["id"], "Q2")
            await start_turn(db, session["id"], "Q3")
            messages = await history(db, session["id"])
    finally:
        await locker.close()
        await db.dispose()
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Q1", "Q3"]


async def test_a_failed_turn_keeps_its_partial_text(db: Database, game: dict[str, Any]) -> None:
    """An answer cut by an error keeps what was streamed, with status and error code."""
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        turn_id, assistant_id = await start_turn(db, session["id"], "Why?")
        await finish_turn(
            db,
            record(
                session,
                turn_id,
                assistant_id,
                content="Because the",
                status="error",
                finish_reason="error",
                citations=[],
                error_code="provider_error",
                first_token_ms=None,
            ),
        )
        answer = (await history(db, session["id"]))[-1]
        (row,) = await usage_rows(db)
    assert (answer["content"], answer["status"], answer["finish_reason"]) == (
        "Because the",
        "error",
        "error",
    )
    assert (row.finish_reason, row.error_code, row.first_token_ms) == (
        "error",
        "provider_error",
        None,
    )


async def test_a_turn_refused_for_its_usage_is_stored_once_its_text_is_dropped(
    db: Database, game: dict[str, Any]
) -> None:
    """A finished turn whose usage no column holds (10**20 tokens) is refused; after
    ``Turn.drop_text`` (the retry after a refused store) the same turn is stored: status
    error, internal_error, no text, no usage, no cost, never left streaming."""
    request = ProviderRequest("", "", [ChatMessage("user", "Why?")], [], "en", "Catan")
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        turn_id, assistant_id = await start_turn(db, session["id"], "Why?")
        turn = Turn(
            id=turn_id,
            session_id=session["id"],
            user_id=USER,
            game_id=game["id"],
            provider="openai",
            model="gpt-4o-mini",
            client_id=None,
            started_at=0.0,
            message_id=assistant_id,
        )
        turn.add_text("Because the rules say so.", 0.1)
        turn.report_usage(Usage(input_tokens=10**20, output_tokens=6), final=True)
        turn.finish("stop", 0.2)
        turn.settle_usage(load_prices(None), request)
        # SQLite: too large for an INTEGER; Postgres: out of int4's range
        with pytest.raises((OverflowError, asyncpg.DataError)):
            await finish_turn(db, turn.record())
        assert (await history(db, session["id"]))[-1]["status"] == "streaming"
        assert turn.drop_text()
        await finish_turn(db, turn.record())
        answer = (await history(db, session["id"]))[-1]
        (row,) = await usage_rows(db)
    assert (answer["id"], answer["content"], answer["status"]) == (assistant_id, "", "error")
    assert (row.finish_reason, row.error_code, row.cost_usd) == ("error", "internal_error", None)
    assert (row.input_tokens, row.output_tokens, row.estimated) == (0, 0, False)
    assert not turn.drop_text()  # nothing left to drop


async def test_history_is_oldest_first_and_limited_to_the_latest(
    db: Database, game: dict[str, Any]
) -> None:
    """History lists a session's messages in order; a limit keeps the latest ones."""
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        other = await new_session(db, game["id"])
        await start_turn(db, other["id"], "elsewhere")
        for i in range(4):
            turn_id, assistant_id = await start_turn(db, session["id"], f"question {i}")
            await finish_turn(db, record(session, turn_id, assistant_id, content=f"answer {i}"))
        everything = await history(db, session["id"])
        latest = await history(db, session["id"], limit=3)
    expected = [text for i in range(4) for text in (f"question {i}", f"answer {i}")]
    assert [m["content"] for m in everything] == expected
    assert [m["role"] for m in everything] == ["user", "assistant"] * 4
    assert [m["content"] for m in latest] == expected[-3:]


async def test_session_with_history_reads_session_game_and_messages_in_one_statement(
    db: Database, game: dict[str, Any]
) -> None:
    """The resume read gives the session, its game and the same messages as ``history``
    (latest ``limit``, oldest first); a session without messages, an empty list; another
    user's session or none, None."""
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        empty = await new_session(db, game["id"])
        for i in range(3):
            turn_id, assistant_id = await start_turn(db, session["id"], f"question {i}")
            await finish_turn(db, record(session, turn_id, assistant_id, content=f"answer {i}"))
        found = await session_with_history(db, session["id"], USER, limit=4)
        expected = await history(db, session["id"], limit=4)
        alone = await session_with_history(db, empty["id"], USER)
        other_users = await session_with_history(db, session["id"], "user-2")
        missing = await session_with_history(db, "no-such-session", USER)
        stored, stored_empty = (
            await get_session(db, session["id"]),
            await get_session(db, empty["id"]),
        )
    assert found is not None and alone is not None
    assert found.session == stored
    assert found.game == {k: game[k] for k in ("id", "name", "status", "section")}
    assert found.messages == expected
    assert [m["content"] for m in found.messages] == [
        "question 1",
        "answer 1",
        "question 2",
        "answer 2",
    ]
    assert alone.session == stored_empty and alone.messages == []
    assert alone.game == found.game
    assert other_users is None and missing is None


async def test_fail_stale_turns_closes_only_old_streaming_answers(
    db: Database, game: dict[str, Any]
) -> None:
    """Only answers still streaming since before the cutoff become errors, and are counted."""
    now = datetime.now(UTC)
    cutoff = now - timedelta(minutes=10)
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        stale_turn, stale = await start_turn(db, session["id"], "old, never answered")
        done_turn, done = await start_turn(db, session["id"], "old, answered")
        await finish_turn(db, record(session, done_turn, done))
        _fresh_turn, fresh = await start_turn(db, session["id"], "still running")
        await age_messages(db, [stale, done], now - timedelta(hours=1))
        # The cutoff may come in any offset: it is the same instant.
        closed = await fail_stale_turns(
            db, older_than=cutoff.astimezone(timezone(timedelta(hours=5)))
        )
        again = await fail_stale_turns(db, older_than=cutoff)
        nothing = await fail_stale_turns(db)
        status = {m["id"]: m["status"] for m in await history(db, session["id"])}
        usage = {r.turn_id: r for r in await usage_rows(db)}
    assert (len(closed), len(again), len(nothing)) == (1, 0, 0)
    assert status[stale] == "error"
    assert status[done] == "complete"
    assert status[fresh] == "streaming"
    # Every started turn that ended has its one usage row; the closed one counts as an error.
    assert set(usage) == {stale_turn, done_turn}
    assert (usage[stale_turn].finish_reason, usage[stale_turn].error_code) == (
        "error",
        "internal_error",
    )
    assert usage[stale_turn].user_id == USER and usage[stale_turn].provider == "local"


async def test_fail_stale_turns_of_one_instance(db: Database, game: dict[str, Any]) -> None:
    """With an instance and a cutoff, only that instance's old streaming answers close."""
    now = datetime.now(UTC)
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        _t1, dead_old = await start_turn(db, session["id"], "a", instance_id="dead")
        _t2, dead_new = await start_turn(db, session["id"], "b", instance_id="dead")
        _t3, alive_old = await start_turn(db, session["id"], "c", instance_id="alive")
        await age_messages(db, [dead_old, alive_old], now - timedelta(hours=1))
        closed = await fail_stale_turns(
            db, instance_id="dead", older_than=now - timedelta(minutes=10)
        )
        status = {m["id"]: m["status"] for m in await history(db, session["id"])}
        everything_of_dead = await fail_stale_turns(db, instance_id="dead")
    assert len(closed) == 1
    assert (status[dead_old], status[dead_new], status[alive_old]) == (
        "error",
        "streaming",
        "streaming",
    )
    assert len(everything_of_dead) == 1


async def test_a_late_finish_replaces_the_sweeps_guess(db: Database, game: dict[str, Any]) -> None:
    """A turn closed by the sweep that then finishes keeps one usage row, with its real figures."""
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        turn_id, assistant_id = await start_turn(db, session["id"], "slow")
        assert len(await fail_stale_turns(db, instance_id="i-1")) == 1
        await finish_turn(db, record(session, turn_id, assistant_id))
        rows = await usage_rows(db)
        async with db.read() as conn:
            count = (await conn.execute(select(func.count()).select_from(usage_events))).scalar()
    assert count == 1
    assert (rows[0].finish_reason, rows[0].error_code, rows[0].output_tokens) == ("stop", None, 8)


async def test_concurrent_sweeps_close_each_answer_once(db: Database, game: dict[str, Any]) -> None:
    """Several instances sweeping at once close each dead answer once, one usage row each."""
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        for i in range(5):
            await start_turn(db, session["id"], f"q{i}", instance_id="dead")
        counts = await asyncio.gather(*(fail_stale_turns(db, instance_id="dead") for _ in range(4)))
        rows = await usage_rows(db)
    assert sum(len(c) for c in counts) == 5
    assert len(rows) == 5


async def test_text_holding_nul_is_refused_or_kept_intact(
    db: Database, game: dict[str, Any]
) -> None:
    """NUL in a message or a lookup never surfaces a driver error: Postgres refuses it as
    invalid input (storing nothing), SQLite keeps it as sent."""
    async with asyncio.timeout(WAIT):
        session = await new_session(db, game["id"])
        if db.is_postgres:
            with pytest.raises(InvalidInput):
                await start_turn(db, session["id"], "how\x00 to win")
            with pytest.raises(InvalidInput):
                await get_session(db, "a\x00")
            assert await history(db, session["id"]) == []
        else:
            await start_turn(db, session["id"], "how\x00 to win")
            assert await get_session(db, "a\x00") is None
            assert (await history(db, session["id"]))[0]["content"] == "how\x00 to win"


async def test_many_concurrent_turns_are_all_stored(db: Database, game: dict[str, Any]) -> None:
    """300 turns beginning and finishing at once are all stored, none past the deadline
    (on SQLite the writers queue in the process instead of polling SQLite's lock)."""
    db = Database(db.url, timeout=2.5)  # the server's default deadline and pool
    session = await new_session(db, game["id"])

    async def one_turn(n: int) -> None:
        turn_id, answer_id = await start_turn(db, session["id"], f"q{n}")
        await finish_turn(db, record(session, turn_id, answer_id))

    async with asyncio.timeout(WAIT):
        try:
            await asyncio.gather(*(one_turn(n) for n in range(300)))
            rows = await usage_rows(db)
        finally:
            await db.dispose()
    assert len(rows) == 300
