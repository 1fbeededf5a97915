"""The session core's own vocabulary: the commands it takes and the events it emits.

Every transport (``/ws/chat``, the AI SDK's WebSocket and HTTP dialects, the admin
watch stream) is an adapter that turns its requests into these commands and these
events into its frames; the core imports none of them.

Commands (validated by the adapter before they get here):

- ``Start`` and ``Resume``: attach a follower to a new or an existing session
  (``SessionHub.attach``);
- ``Ask``: a question in the attached session (``SessionHub.ask``);
- cancel and detach are plain calls (``SessionHub.cancel``, ``SessionHub.detach``).

Events are plain dicts with a ``type``, made once by the core and shared by every
follower that receives them (never copied per follower, never encoded here):

- ``session.ready``: ``session``, ``history``, ``quota``, ``running`` (the turn that
  runs now, ``{"turn_id", "message_id", "seq"}``, or None);
- ``turn.started``: ``turn_id``, ``message_id`` (the question), ``client_id``, ``quota``;
- ``turn.delta``: ``turn_id``, ``seq`` (contiguous from 1 within the turn, the same
  for every follower, the only position anyone resumes from), ``text``;
- ``turn.completed``: ``turn_id``, ``message_id`` (the answer), ``finish_reason``,
  ``provider`` and ``model`` (who answered), ``usage`` (``input_tokens``,
  ``output_tokens``, ``estimated``, ``cost_usd``), ``citations``, ``timing``;
- ``error``: ``code``, ``message``, and ``turn_id``/``context`` when they apply.

Their shapes are those of the ``/ws/chat`` frames (CONTRACT §2), which that adapter
sends as they are; other dialects translate them at their writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ChatServerError

__all__ = ["Ask", "Event", "Resume", "Start", "error_event", "error_from"]

#: An event as the core emits it (see the module docstring for the types).
Event = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Start:
    """Attach to a new session on ``game_id`` (under ``session_id`` when the client
    names its sessions itself: an AI SDK chat id; else a new id)."""

    game_id: str
    language: str = "en"
    provider: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Resume:
    """Attach to one of the user's sessions; follow its running turn after ``after_seq``.

    ``turn_id`` names the turn the client was following: ``after_seq`` applies to the
    running turn only when it is that one (or when ``turn_id`` is None).
    """

    session_id: str
    turn_id: str | None = None
    after_seq: int | None = None


@dataclass(frozen=True, slots=True)
class Ask:
    """A question in the attached session (``client_id`` is echoed in ``turn.started``)."""

    text: str
    client_id: str | None = None


def error_event(
    code: str, message: str, *, turn_id: str | None = None, context: dict[str, Any] | None = None
) -> Event:
    event: Event = {"type": "error", "code": code, "message": message}
    if turn_id is not None:
        event["turn_id"] = turn_id
    if context:
        event["context"] = context
    return event


def error_from(exc: ChatServerError, *, turn_id: str | None = None) -> Event:
    """The one mapping from a domain error to an ``error`` event."""
    return error_event(exc.code, exc.message, turn_id=turn_id, context=exc.context or None)
