"""The AI SDK's UI message chunks of one answer, from the session core's events (no I/O).

One ``AnswerChunks`` per request (a ``send``, a ``resume``, a POST or a resume GET).
An answer reads::

    start {messageId}  text-start  text-delta...  text-end
    source-document (one per citation)  data-quota (transient)  finish {finishReason}

A failure mid-answer adds an ``error`` chunk before ``text-end``; an ``abort`` from
the requester ends the answer with an ``abort`` chunk instead of ``finish``. Only
fields the ``ai`` package's ``uiMessageChunkSchema`` names are ever set (its Node
tests check each chunk's keys against the schema). ``Sequencer`` numbers the chunks of
one WebSocket request from 0, contiguous, as ``WebSocketChatTransport`` requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["AnswerChunks", "Sequencer", "error_text", "finish_reason"]

Chunk = dict[str, Any]
#: The core's finish reasons, as the AI SDK names them (``cancelled`` has no name there).
FINISH_REASONS: dict[str, str] = {
    "stop": "stop",
    "length": "length",
    "error": "error",
    "cancelled": "other",
}


def finish_reason(reason: str | None) -> str:
    return FINISH_REASONS.get(reason or "", "other")


def error_text(code: str, message: str) -> str:
    """An ``errorText``: the contract's code first, so a client can tell refusals apart."""
    return f"{code}: {message}"


def _media_type(citation: Mapping[str, Any]) -> str:
    media = citation.get("media_type")
    if isinstance(media, str) and media:
        return media
    return "application/pdf" if citation.get("page") is not None else "text/plain"


class AnswerChunks:
    """Builds the chunks of one answer as its events arrive; each method returns a list."""

    __slots__ = ("_text_id", "ended", "quota", "started")

    def __init__(self, quota: Mapping[str, Any] | None = None) -> None:
        self.quota = dict(quota) if quota is not None else None
        self.started = False
        self.ended = False
        self._text_id = ""

    def start(self, message_id: str, turn_id: str) -> list[Chunk]:
        """The answer begins: ``message_id`` is the stored assistant message's id."""
        if self.started:
            return []
        self.started = True
        self._text_id = f"text-{turn_id}"
        return [
            {"type": "start", "messageId": message_id},
            {"type": "text-start", "id": self._text_id},
        ]

    def text(self, delta: str) -> list[Chunk]:
        if not self.started or self.ended or not delta:
            return []
        return [{"type": "text-delta", "id": self._text_id, "delta": delta}]

    def failure(self, code: str, message: str) -> list[Chunk]:
        """A failure inside the answer (the ``finish`` with ``error`` follows)."""
        if self.ended:
            return []
        return [{"type": "error", "errorText": error_text(code, message)}]

    def finish(
        self, reason: str | None, citations: list[Mapping[str, Any]], *, aborted: bool = False
    ) -> list[Chunk]:
        """The answer ended: close the text, name its sources, then finish or abort."""
        if not self.started or self.ended:
            return []
        self.ended = True
        chunks: list[Chunk] = [{"type": "text-end", "id": self._text_id}]
        for citation in citations:
            chunks.append(
                {
                    "type": "source-document",
                    "sourceId": str(citation.get("passage_id") or ""),
                    "mediaType": _media_type(citation),
                    "title": str(citation.get("title") or citation.get("heading") or ""),
                }
            )
        if self.quota is not None:
            chunks.append({"type": "data-quota", "data": self.quota, "transient": True})
        if aborted:
            chunks.append({"type": "abort"})
        else:
            chunks.append({"type": "finish", "finishReason": finish_reason(reason)})
        return chunks

    def from_core(self, frame: Mapping[str, Any], message_id: str, *, aborted: bool) -> list[Chunk]:
        """The chunks for one of the core's events (today: ``/ws/chat``'s turn frames).

        ``message_id`` is the answer's stored message; ``aborted`` says whether this
        request asked for the end (its ``abort``), so a cancelled answer ends with
        ``abort`` rather than ``finish``.
        """
        kind = frame.get("type")
        if kind == "turn.started":
            if frame.get("quota") is not None:
                self.quota = dict(frame["quota"])
            return self.start(message_id, str(frame["turn_id"]))
        if kind == "turn.delta":
            return self.text(str(frame["text"]))
        if kind == "error":
            return self.failure(str(frame["code"]), str(frame.get("message", "")))
        if kind == "turn.completed":
            chunks = self.start(message_id, str(frame["turn_id"]))
            reason = frame.get("finish_reason")
            return chunks + self.finish(
                reason,
                list(frame.get("citations") or []),
                aborted=aborted and reason == "cancelled",
            )
        return []


class Sequencer:
    """One WebSocket request's ``chunk`` frames: ``sequence`` contiguous from 0."""

    __slots__ = ("next", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.next = 0

    def frame(self, chunk: Chunk) -> dict[str, Any]:
        frame = {
            "type": "chunk",
            "requestId": self.request_id,
            "sequence": self.next,
            "chunk": chunk,
        }
        self.next += 1
        return frame

    def control(self, kind: Literal["start", "end", "no-active"]) -> dict[str, Any]:
        return {"type": kind, "requestId": self.request_id}

    def error(self, code: str, message: str) -> dict[str, Any]:
        return {
            "type": "error",
            "requestId": self.request_id,
            "errorText": error_text(code, message),
        }
