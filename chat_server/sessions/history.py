"""A session's latest messages, kept in memory for the next turn's prompt.

Every turn of a session attached on this instance runs through this instance's
``ChatService``, so the conversation a turn sends to the provider need not be read
back from the database: it is loaded once when a connection attaches (``session.start``
has none, ``session.resume`` reads the history anyway) and kept up to date as turns
start (the question, the answer's placeholder) and end (the answer). It gives the prompt
exactly what the database read gave: of the latest ``size`` messages, those
``complete`` and non-empty, newest first until ``chars`` characters are used; older
text, which no later turn could send either, is not kept.

What this instance cannot know it does not guess: an answer still ``streaming`` that
is not this instance's running turn (its turn runs elsewhere, or its instance died)
makes the history ``stale``, and the next turn reads it from the database again.

No I/O; one event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..providers.base import ChatMessage

__all__ = ["History"]


class History:
    """The latest messages of one session; shared by its connections on this instance."""

    __slots__ = ("__weakref__", "_open", "chars", "messages", "size", "stale")

    def __init__(self, size: int, chars: int) -> None:
        self.size = size
        self.chars = chars
        #: oldest first; None for a message the prompt skips (not complete, or empty)
        self.messages: tuple[ChatMessage | None, ...] = ()
        self.stale = False
        self._open: str | None = None  # the running turn's answer (the last message)

    def load(self, rows: Iterable[dict[str, Any]], running: str | None = None) -> None:
        """Take the latest messages as stored (oldest first), e.g. from a fresh read.

        ``running``: this instance's running turn in the session, as its answer's
        message id ("" while its question is still being stored), if any.
        """
        latest = list(rows)[-self.size :] if self.size else []
        self._set(tuple(_usable(m["role"], m["content"], m["status"]) for m in latest))
        last = latest[-1]["id"] if latest else None
        self._open = running if running and running == last else None
        self.stale = (running is not None and self._open is None) or any(
            m["status"] == "streaming" and m["id"] != self._open for m in latest
        )

    def begin(self, question: str, answer_id: str) -> None:
        """A turn's question and its answer's placeholder were stored."""
        self._add((_usable("user", question, "complete"), None))
        self._open = answer_id if self.size else None

    def finish(self, answer_id: str, content: str, status: str) -> None:
        """The turn whose answer is ``answer_id`` ended with ``content`` and ``status``."""
        if self._open != answer_id:
            return
        self._open = None
        self._set((*self.messages[:-1], _usable("assistant", content, status)))

    def conversation(self) -> list[ChatMessage]:
        """What a turn sends before its question: the newest usable messages that fit
        in ``chars`` characters together, oldest first, starting with a question."""
        messages: list[ChatMessage] = []
        budget = self.chars
        for message in reversed(self.messages):
            if message is None:
                continue
            budget -= len(message.content)
            if budget < 0:
                break
            messages.append(message)
        messages.reverse()
        while messages and messages[0].role != "user":
            messages.pop(0)
        return messages

    def _add(self, messages: tuple[ChatMessage | None, ...]) -> None:
        if self.size:
            self._set((*self.messages, *messages)[-self.size :])

    def _set(self, messages: tuple[ChatMessage | None, ...]) -> None:
        """Keep ``messages`` up to the newest one past the character budget (excluded).

        The prompt takes messages newest first and stops at the first that does not
        fit; newer messages only push that point later, so what is cut never returns.
        """
        used = 0
        for index in range(len(messages) - 1, -1, -1):
            message = messages[index]
            if message is not None:
                used += len(message.content)
                if used > self.chars:
                    messages = messages[index + 1 :]
                    break
        self.messages = messages


def _usable(role: str, content: str, status: str) -> ChatMessage | None:
    if status != "complete" or not content:
        return None
    return ChatMessage("user" if role == "user" else "assistant", content)
