"""What the Vercel AI SDK's transports send us (CONTRACT §8), validated.

``WebSocketChatTransport`` sends ``send``, ``resume`` and ``abort`` frames over one
socket; ``DefaultChatTransport`` POSTs ``{id, messages, trigger, messageId, ...body}``.
Both carry the whole conversation as UI messages; only the last user message's text
parts are asked (the history is the server's). Unknown keys are ignored rather than
refused: the frames belong to the ``ai`` package, whose later releases may add fields,
and what we read of them is checked strictly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    TypeAdapter,
)
from pydantic import ValidationError as PydanticValidationError

from ..errors import InvalidInput
from ..frames import load_object
from ..text import unstorable

__all__ = [
    "AbortFrame",
    "ChatBody",
    "ChatRequest",
    "ClientFrame",
    "ResumeFrame",
    "SendFrame",
    "UIMessage",
    "parse_client_frame",
]

#: A chat id is a session id: ``useChat`` makes its own, so any such string is accepted.
ChatId = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
RequestId = Annotated[StrictStr, Field(min_length=1, max_length=200)]
MAX_DEPTH = 32
MAX_MESSAGES = 1000


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class UIPart(_Loose):
    type: Annotated[StrictStr, Field(max_length=200)]
    text: StrictStr | None = None


class UIMessage(_Loose):
    id: Annotated[StrictStr, Field(max_length=200)] = ""
    role: Literal["system", "user", "assistant"]
    parts: Annotated[list[UIPart], Field(max_length=1000)] = []

    @property
    def text(self) -> str:
        return "".join(p.text or "" for p in self.parts if p.type == "text")


class ChatBody(_Loose):
    """The app's own ``body`` entries that we read: where a new chat's session goes."""

    game_id: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    language: Annotated[StrictStr, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?$")] = "en"
    provider: Annotated[StrictStr, Field(min_length=1, max_length=32)] | None = None


Trigger = Literal["submit-message", "regenerate-message"]
Messages = Annotated[list[UIMessage], Field(max_length=MAX_MESSAGES)]


class SendFrame(_Loose):
    type: Literal["send"]
    requestId: RequestId
    id: ChatId
    trigger: Trigger
    messageId: Annotated[StrictStr, Field(max_length=200)] | None = None
    messages: Messages
    headers: dict[str, StrictStr] = {}
    body: dict[str, Any] = {}
    metadata: Any = None


class ResumeFrame(_Loose):
    type: Literal["resume"]
    requestId: RequestId
    id: ChatId
    lastSequence: Annotated[StrictInt, Field(ge=0)] | None = None
    headers: dict[str, StrictStr] = {}
    body: dict[str, Any] = {}
    metadata: Any = None


class AbortFrame(_Loose):
    type: Literal["abort"]
    requestId: RequestId


ClientFrame = Annotated[SendFrame | ResumeFrame | AbortFrame, Field(discriminator="type")]
_frames: TypeAdapter[Any] = TypeAdapter(ClientFrame)


class ChatRequest(_Loose):
    """``POST /ai-sdk/chat``: the HTTP transport's body (the app's ``body`` spread in)."""

    id: ChatId
    trigger: Trigger = "submit-message"
    messageId: Annotated[StrictStr, Field(max_length=200)] | None = None
    messages: Messages
    game_id: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None
    language: Annotated[StrictStr, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?$")] = "en"
    provider: Annotated[StrictStr, Field(min_length=1, max_length=32)] | None = None

    def chat_body(self) -> ChatBody:
        return ChatBody(game_id=self.game_id, language=self.language, provider=self.provider)


def body_of(frame: SendFrame | ResumeFrame) -> ChatBody:
    """The frame's ``body`` entries we read, validated like the rest."""
    try:
        return ChatBody.model_validate(frame.body)
    except PydanticValidationError as exc:
        raise InvalidInput(_describe(exc, "body")) from None


def question(messages: list[UIMessage]) -> str:
    """The text of the last user message: the one question a request asks."""
    for message in reversed(messages):
        if message.role == "user":
            text = message.text
            if text:
                if unstorable(text):
                    raise InvalidInput(
                        "messages: text must not contain NUL characters or lone surrogates"
                    )
                return text
            break
    raise InvalidInput("messages: the last user message has no text part")


def parse_client_frame(raw: str) -> SendFrame | ResumeFrame | AbortFrame:
    """Validate one WebSocket text frame; ``InvalidInput`` says what is wrong."""
    data = load_object(raw, MAX_DEPTH)
    try:
        frame: SendFrame | ResumeFrame | AbortFrame = _frames.validate_python(data)
    except PydanticValidationError as exc:
        raise InvalidInput(_describe(exc, "frame")) from None
    return frame


def _describe(exc: PydanticValidationError, where: str) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    if err.get("type") == "union_tag_invalid":
        return "unknown frame type (expected send, resume or abort)"
    loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("send", "resume", "abort"))
    return f"{loc or where}: {err.get('msg', 'invalid')}"[:200]
