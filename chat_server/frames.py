"""The WebSocket protocol's frames (CONTRACT §2): inbound validation, outbound shapes.

Inbound frames are pydantic models, strict (no type coercion, no unknown fields), in
one discriminated union on ``type``; ``parse_frame`` is the only way in and raises
``InvalidInput`` with a message a client developer can act on. Outbound frames are
the session core's events (``sessions/protocol.py``), sent as they are: this
dialect's frames have the core's shapes; ``encode`` makes their text, once per event.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
)
from pydantic import ValidationError as PydanticValidationError

from .errors import InvalidInput
from .sessions.protocol import error_event as error_frame
from .sessions.protocol import error_from
from .text import clean, cut, unstorable_json

__all__ = [
    "AuthFrame",
    "CancelFrame",
    "InboundFrame",
    "MessageFrame",
    "PingFrame",
    "SessionResumeFrame",
    "SessionStartFrame",
    "encode",
    "error_frame",
    "error_from",
    "load_object",
    "parse_frame",
]

Id = Annotated[StrictStr, Field(min_length=1, max_length=64)]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AuthFrame(_Frame):
    type: Literal["auth"]
    token: Annotated[StrictStr, Field(min_length=1, max_length=16384)]


class SessionStartFrame(_Frame):
    type: Literal["session.start"]
    game_id: Id
    language: Annotated[StrictStr, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?$")] = "en"
    provider: Annotated[StrictStr, Field(min_length=1, max_length=32)] | None = None


class SessionResumeFrame(_Frame):
    type: Literal["session.resume"]
    session_id: Id
    turn_id: Id | None = None
    after_seq: Annotated[StrictInt, Field(ge=0, le=10_000_000)] | None = None


def _storable(text: str) -> str:
    """PostgreSQL cannot store NUL: refused on every database alike, before any turn."""
    if "\x00" in text:
        raise ValueError("must not contain NUL characters")
    return text


class MessageFrame(_Frame):
    type: Literal["message"]
    text: Annotated[StrictStr, Field(min_length=1), AfterValidator(_storable)]
    client_id: Annotated[StrictStr, Field(max_length=200)] | None = None


class CancelFrame(_Frame):
    type: Literal["cancel"]
    turn_id: Id | None = None


class PingFrame(_Frame):
    type: Literal["ping"]
    id: (
        Annotated[StrictStr, Field(max_length=200)]
        | Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]
        | None
    ) = None


InboundFrame = Annotated[
    AuthFrame | SessionStartFrame | SessionResumeFrame | MessageFrame | CancelFrame | PingFrame,
    Field(discriminator="type"),
]
_adapter: TypeAdapter[Any] = TypeAdapter(InboundFrame)
MAX_DEPTH = 8


def parse_frame(
    raw: str,
) -> AuthFrame | SessionStartFrame | SessionResumeFrame | MessageFrame | (CancelFrame | PingFrame):
    """Validate one text frame; ``InvalidInput`` says what is wrong."""
    data = load_object(raw, MAX_DEPTH)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise InvalidInput("frame needs a string 'type'")
    try:
        return _adapter.validate_python(data)
    except PydanticValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err.get("loc", ()) if p != kind) or "frame"
        if err.get("type") == "union_tag_invalid":
            raise InvalidInput(f"unknown frame type {kind[:40]!r}") from None
        raise InvalidInput(f"{cut(where)}: {err.get('msg', 'invalid')}") from None


def load_object(raw: str, max_depth: int) -> dict[str, Any]:
    """A text frame's JSON object, or ``InvalidInput``: not JSON, not an object, nested
    deeper than ``max_depth``, or holding what cannot be stored (NUL, lone surrogates).
    Every WebSocket dialect reads its frames through this."""
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise InvalidInput("frame is nested too deeply") from exc
    except ValueError as exc:
        raise InvalidInput("frame is not valid JSON") from exc
    if not isinstance(data, dict):
        raise InvalidInput("frame must be a JSON object")
    if _depth(data, max_depth) > max_depth:
        raise InvalidInput("frame is nested too deeply")
    if unstorable_json(raw, data):
        raise InvalidInput("frame holds a NUL or a lone surrogate")
    return data


def _depth(value: Any, limit: int, level: int = 1) -> int:
    if level > limit:
        return level
    if isinstance(value, dict):
        return max((_depth(v, limit, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, limit, level + 1) for v in value), default=level)
    return level


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot encode {type(value).__name__}")


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_default)


_last: list[Any] = [None, ""]  # the last event encoded, and its text


def encode(frame: dict[str, Any]) -> str:
    """The frame's JSON text, never holding a lone surrogate (it could not be sent as
    UTF-8: U+FFFD instead). An event that several followers of a session send (the
    core shares one dict between them) is encoded once: the last one's text is kept.
    Events are never changed once emitted, so the same object means the same text."""
    last = _last
    if frame is last[0]:
        text: str = last[1]
        return text
    text = _encoder.encode(frame)
    if not text.isascii():
        text = clean(text)
    last[0], last[1] = frame, text
    return text
