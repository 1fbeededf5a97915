"""Group commit: turns asked at the same time have their questions and answers written
together, and each caller still sees what its own statement would have done."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from sqlalchemy import select

from chat_server.errors import Unavailable
from chat_server.storage import Database
from chat_server.storage.chat import begin_turn, finish_turn, history
from chat_server.storage.games import create_game
from chat_server.storage.group_commit import GroupCommit
from chat_server.storage.ids import new_id
from chat_server.storage.schema import chat_messages, usage_events

from .conftest import WAIT
from .test_chat import new_session, record

TURNS = 30


async def test_questions_and_answers_of_a_burst_are_all_stored(db: Database) -> None:
    """30 turns begin and finish at once: every question, every answer and every usage
    row is stored as each turn said; on Postgres in a few statements, not 30 each."""
    async with asyncio.timeout(WAIT):
        game = await create_game(db, {"name": "Burst"})
        sessions = [await new_session(db, game["id"], user_id=f"u{i}") for i in range(TURNS)]
        turn_ids = [new_id() for _ in sessions]
        begun = await asyncio.gather(
            *(
                begin_turn(db, session_id=s["id"], turn_id=t, text=f"question {i}", instance_id="i")
                for i, (s, t) in enumerate(zip(sessions, turn_ids, strict=True))
            )
        )
        await asyncio.gather(
            *(
                finish_turn(db, record(s, t, answer, content=f"answer {i}", output_tokens=i))
                for i, (s, t, (_q, answer)) in enumerate(
                    zip(sessions, turn_ids, begun, strict=True)
                )
            )
        )
        for i, session in enumerate(sessions):
            rows = await history(db, session["id"])
            assert [(m["role"], m["content"], m["status"]) for m in rows] == [
                ("user", f"question {i}", "complete"),
                ("assistant", f"answer {i}", "complete"),
            ]
            assert rows[1]["citations"] == [{"passage_id": "p1", "quote": "dice"}]
        async with db.read() as conn:
            usage = (await conn.execute(select(usage_events))).all()
        by_turn = {row.turn_id: row for row in usage}
        assert sorted(by_turn) == sorted(turn_ids)
        assert [by_turn[t].output_tokens for t in turn_ids] == list(range(TURNS))
        assert by_turn[turn_ids[3]].first_token_ms == 40 and by_turn[turn_ids[3]].cost_usd is None
    if db.is_postgres:
        questions, answers = db.group_commits["questions"], db.group_commits["answers"]
        assert questions.rows == answers.rows == TURNS
        assert questions.statements <= 3 and answers.statements <= 3


async def test_a_refused_row_fails_only_its_own_turn(db: Database) -> None:
    """A question for a session deleted meanwhile fails; the turns asked with it are stored."""
    async with asyncio.timeout(WAIT):
        game = await create_game(db, {"name": "Burst"})
        sessions = [await new_session(db, game["id"], user_id=f"u{i}") for i in range(6)]
        ids = [s["id"] for s in sessions]
        ids[2] = "no-such-session"
        results = await asyncio.gather(
            *(
                begin_turn(db, session_id=sid, turn_id=new_id(), text=f"q{i}", instance_id="i")
                for i, sid in enumerate(ids)
            ),
            return_exceptions=True,
        )
        assert isinstance(results[2], Exception)
        assert all(not isinstance(r, BaseException) for i, r in enumerate(results) if i != 2)
        for i, session in enumerate(sessions):
            if i != 2:
                assert [m["content"] for m in await history(db, session["id"])] == [f"q{i}", ""]
        async with db.read() as conn:
            orphans = (
                await conn.execute(
                    select(chat_messages.c.id).where(
                        chat_messages.c.session_id == "no-such-session"
                    )
                )
            ).all()
        assert orphans == []


async def test_a_cancelled_question_leaves_nothing(db: Database) -> None:
    """Turns stopped while their question was being written leave no message behind,
    whether their write had gone out or was still waiting for the batch before it."""
    async with asyncio.timeout(WAIT):
        game = await create_game(db, {"name": "Burst"})
        sessions = [await new_session(db, game["id"], user_id=f"u{i}") for i in range(4)]
        tasks = [
            asyncio.create_task(
                begin_turn(db, session_id=s["id"], turn_id=new_id(), text=f"q{i}", instance_id="i")
            )
            for i, s in enumerate(sessions)
        ]
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the first went out; the others wait for it (Postgres)
        tasks[0].cancel()
        tasks[2].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert isinstance(results[2], asyncio.CancelledError)
        for group in db.group_commits.values():
            await group.aclose()  # the undo of a written row, if one was written
        stored = {s["id"]: [m["content"] for m in await history(db, s["id"])] for s in sessions}
        assert stored[sessions[0]["id"]] == [] and stored[sessions[2]["id"]] == []
        assert stored[sessions[1]["id"]] == ["q1", ""] and stored[sessions[3]["id"]] == ["q3", ""]


# -- the batcher alone, with writers that record what they were given ------------------


class Writes:
    """Writers for a ``GroupCommit`` that record each statement's rows."""

    def __init__(self, refuse: set[int] | None = None, down: bool = False) -> None:
        self.statements: list[list[int]] = []
        self.written: list[int] = []
        self.undone: list[int] = []
        self.refuse = refuse or set()
        self.down = down

    async def many(self, rows: Sequence[int]) -> None:
        self.statements.append(list(rows))
        await asyncio.sleep(0.01)
        if self.down:
            raise Unavailable("down")
        if self.refuse & set(rows):
            raise ValueError("refused")
        self.written.extend(rows)

    async def one(self, row: int) -> None:
        await self.many([row])

    async def undo(self, row: int) -> None:
        self.undone.append(row)


def group(writes: Writes, **kwargs: Any) -> GroupCommit[int]:
    return GroupCommit("test", writes.many, writes.one, undo=writes.undo, **kwargs)


async def test_a_lone_write_goes_out_at_once_and_later_ones_together() -> None:
    writes = Writes()
    batcher = group(writes, max_rows=4)
    first = asyncio.create_task(batcher.write(0))
    await asyncio.sleep(0.001)  # in flight
    await asyncio.gather(first, *(batcher.write(i) for i in range(1, 7)))
    assert writes.statements == [[0], [1, 2, 3, 4], [5, 6]]
    assert sorted(writes.written) == list(range(7))


async def test_a_refused_batch_is_written_row_by_row() -> None:
    writes = Writes(refuse={2})
    batcher = group(writes)
    results = await asyncio.gather(*(batcher.write(i) for i in range(4)), return_exceptions=True)
    assert isinstance(results[2], ValueError)
    assert [r for i, r in enumerate(results) if i != 2] == [None, None, None]
    assert sorted(writes.written) == [0, 1, 3]


async def test_an_outage_is_every_rows_error_without_retrying_each() -> None:
    writes = Writes(down=True)
    batcher = group(writes)
    results = await asyncio.gather(*(batcher.write(i) for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert writes.statements == [[0], [1, 2, 3]]  # no row retried alone


async def test_cancelled_callers_rows_are_taken_back_or_undone() -> None:
    writes = Writes()
    batcher = group(writes)
    first = asyncio.create_task(batcher.write(0))
    await asyncio.sleep(0.001)  # 0 is in flight, alone
    waiting = asyncio.create_task(batcher.write(1))
    batched = asyncio.create_task(batcher.write(2))
    sent = asyncio.create_task(batcher.write(3))
    await asyncio.sleep(0)
    waiting.cancel()  # 1 waits behind 0: taken back
    await first
    await asyncio.sleep(0.001)  # 2 and 3 are in flight together
    sent.cancel()
    await batched
    with pytest.raises(asyncio.CancelledError):
        await waiting
    with pytest.raises(asyncio.CancelledError):
        await sent
    await batcher.aclose()
    assert writes.statements == [[0], [2, 3]]  # 1 never went out
    assert writes.written == [0, 2, 3] and writes.undone == [3]  # 3 written, then undone


async def test_a_cancelled_lone_write_is_not_written() -> None:
    """A row alone in flight is its caller's own statement: cancelling stops it."""
    writes = Writes()
    batcher = group(writes)
    alone = asyncio.create_task(batcher.write(0))
    await asyncio.sleep(0.001)
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    await batcher.write(1)
    assert writes.written == [1] and writes.undone == []
