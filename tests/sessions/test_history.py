"""A session's history in memory gives each turn the conversation the database would."""

from __future__ import annotations

import random
from typing import Any

from chat_server.providers.base import ChatMessage
from chat_server.sessions.history import History


def from_rows(rows: list[dict[str, Any]], size: int, chars: int) -> list[ChatMessage]:
    """The conversation as read back from the stored messages (the reference)."""
    latest = rows[-size:] if size else []
    messages: list[ChatMessage] = []
    budget = chars
    for row in reversed(latest):
        if row["status"] != "complete" or not row["content"]:
            continue
        budget -= len(row["content"])
        if budget < 0:
            break
        messages.append(ChatMessage(row["role"], row["content"]))
    messages.reverse()
    while messages and messages[0].role != "user":
        messages.pop(0)
    return messages


class Session:
    """Stored rows and a History kept up to date the way the service does it."""

    def __init__(self, size: int, chars: int) -> None:
        self.rows: list[dict[str, Any]] = []
        self.history = History(size, chars)
        self.size, self.chars = size, chars

    def begin(self, question: str) -> str:
        answer_id = f"m{len(self.rows) + 1}"
        self.rows.append(
            {"id": f"m{len(self.rows)}", "role": "user", "content": question, "status": "complete"}
        )
        self.rows.append(
            {"id": answer_id, "role": "assistant", "content": "", "status": "streaming"}
        )
        self.history.begin(question, answer_id)
        return answer_id

    def finish(self, answer_id: str, content: str, status: str) -> None:
        row = next(r for r in self.rows if r["id"] == answer_id)
        row.update(content=content, status=status)
        self.history.finish(answer_id, content, status)

    def check(self) -> None:
        assert not self.history.stale
        assert self.history.conversation() == from_rows(self.rows, self.size, self.chars)


def test_turns_kept_in_memory_give_what_the_stored_rows_give() -> None:
    """Random turns (long, short, empty, cancelled, failed), random limits, reloads:
    after every step the conversation equals the one read back from storage."""
    rng = random.Random(7)
    for _ in range(200):
        session = Session(size=2 * rng.randint(0, 4), chars=rng.choice([0, 10, 60, 400]))
        for _ in range(rng.randint(1, 12)):
            answer = session.begin("q" * rng.randint(0, 40))
            session.check()
            status = rng.choice(["complete", "complete", "cancelled", "error"])
            session.finish(answer, "a" * rng.randint(0, 50), status)
            session.check()
            if rng.random() < 0.2:  # a resume reads the stored rows back
                session.history.load(session.rows)
                session.check()


def test_a_running_turn_found_on_resume_is_completed_in_memory() -> None:
    """Resumed while this instance's turn streams: its answer joins when it ends."""
    session = Session(size=6, chars=1000)
    answer = session.begin("How do I win?")
    session.history.load(session.rows, running=answer)
    assert not session.history.stale
    session.finish(answer, "Ten points.", "complete")
    session.check()
    assert session.history.conversation()[-1] == ChatMessage("assistant", "Ten points.")


def test_an_answer_streaming_elsewhere_makes_the_history_stale() -> None:
    """A placeholder this instance does not own (another instance's turn, a dead one):
    memory cannot know its end, so the next turn reads the history again."""
    session = Session(size=6, chars=1000)
    session.begin("Elsewhere?")
    session.history.load(session.rows)
    assert session.history.stale
    session.rows[-1].update(content="Yes.", status="complete")
    session.history.load(session.rows)
    session.check()


def test_a_turn_whose_question_is_still_being_stored_makes_a_resume_stale() -> None:
    """Resumed while a turn of this instance has not stored its question yet."""
    history = History(6, 1000)
    history.load([], running="")
    assert history.stale


def test_text_that_no_later_turn_could_send_is_not_kept() -> None:
    """Past the character budget, older messages are dropped, not held."""
    session = Session(size=20, chars=100)
    for i in range(10):
        session.finish(session.begin(f"question {i} " + "x" * 30), "y" * 40, "complete")
    kept = [m for m in session.history.messages if m is not None]
    assert sum(len(m.content) for m in kept) <= 100
    session.check()
