"""The shapes of the frames ``/ws/chat`` sends (CONTRACT §2), as pydantic models.

The server builds its outbound frames as plain dicts on the hot path (a model per
``turn.delta`` would cost CPU per token); these models are what those dicts must be.
``GET /asyncapi.json`` is generated from them and from the inbound models in
``frames.py``, and the tests validate every frame a real connection receives against
``OUTBOUND`` (extra keys refused), so the description and the wire cannot drift apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = ["OUTBOUND", "OUTBOUND_MODELS", "validate_outbound"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Quota(_Out):
    """The ``chat`` feature's daily quota for this user on this game (UTC days)."""

    feature: str
    daily_limit: int | None = Field(description="null: unlimited (turns are counted all the same)")
    used: int
    remaining: int | None
    resets_at: str = Field(description="the next UTC midnight, e.g. 2026-11-27T00:00:00Z")


class Citation(_Out):
    """A passage of the game's documents that the answer rests on."""

    passage_id: str
    document_id: str
    title: str | None = None
    heading: str | None = None
    page: int | None = None
    url: str | None = None
    offset: int | None = None
    quote: str | None = None


class SessionInfo(_Out):
    id: str
    game_id: str
    language: str
    provider: str
    model: str
    created_at: str


class HistoryMessage(_Out):
    id: str
    role: Literal["user", "assistant"]
    content: str
    status: Literal["complete", "cancelled", "error", "streaming"]
    created_at: str | None = None
    turn_id: str | None = None
    citations: list[Citation] | None = None
    finish_reason: str | None = None


class Running(_Out):
    turn_id: str
    message_id: str
    seq: int


class ReadyFrame(_Out):
    """Authentication succeeded."""

    type: Literal["ready"]
    user_id: str
    role: str
    connection_id: str


class SessionReadyFrame(_Out):
    """The answer to ``session.start`` and ``session.resume``."""

    type: Literal["session.ready"]
    session: SessionInfo
    history: list[HistoryMessage]
    quota: Quota
    running: Running | None = None


class TurnStartedFrame(_Out):
    """A turn started: ``message_id`` is the stored user message."""

    type: Literal["turn.started"]
    turn_id: str
    message_id: str
    client_id: str | None
    quota: Quota


class TurnDeltaFrame(_Out):
    """Text of the answer; ``seq`` counts 1, 2, 3 ... within the turn."""

    type: Literal["turn.delta"]
    turn_id: str
    seq: Annotated[int, Field(ge=1)]
    text: str


class Usage(_Out):
    input_tokens: int
    output_tokens: int
    estimated: bool | None = None
    cost_usd: float | None = None


class Timing(_Out):
    first_token_ms: int | None
    total_ms: int


class TurnCompletedFrame(_Out):
    """The turn ended: ``message_id`` is the stored assistant message."""

    type: Literal["turn.completed"]
    turn_id: str
    message_id: str
    finish_reason: Literal["stop", "length", "cancelled", "error"]
    usage: Usage
    citations: list[Citation]
    timing: Timing
    provider: str | None = None
    model: str | None = None


class ErrorFrame(_Out):
    """A refused frame or a failed turn; see the codes in docs/protocol.md."""

    type: Literal["error"]
    code: Literal[
        "unauthorized",
        "token_expired",
        "forbidden",
        "invalid_frame",
        "not_found",
        "session_required",
        "turn_in_progress",
        "feature_disabled",
        "quota_exceeded",
        "rate_limited",
        "provider_error",
        "provider_unavailable",
        "unavailable",
        "internal_error",
        "server_shutting_down",
        "conflict",
    ]
    message: str
    turn_id: str | None = None
    context: dict[str, Any] | None = None


class PongFrame(_Out):
    """The answer to ``ping``, echoing its ``id``."""

    type: Literal["pong"]
    id: str | int | None = None


OUTBOUND_MODELS: tuple[type[_Out], ...] = (
    ReadyFrame,
    SessionReadyFrame,
    TurnStartedFrame,
    TurnDeltaFrame,
    TurnCompletedFrame,
    ErrorFrame,
    PongFrame,
)
OUTBOUND: TypeAdapter[Any] = TypeAdapter(
    Annotated[
        ReadyFrame
        | SessionReadyFrame
        | TurnStartedFrame
        | TurnDeltaFrame
        | TurnCompletedFrame
        | ErrorFrame
        | PongFrame,
        Field(discriminator="type"),
    ]
)


def validate_outbound(frame: dict[str, Any]) -> BaseModel:
    """The model of a frame the server sent (raises when it is not one of them)."""
    model: BaseModel = OUTBOUND.validate_python(frame)
    return model
