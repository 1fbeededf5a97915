"""The AI SDK chunks of an answer, and the transports' client frames, without I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from chat_server.errors import InvalidInput
from chat_server.transports.ai_sdk_chunks import AnswerChunks, Sequencer
from chat_server.transports.ai_sdk_frames import (
    AbortFrame,
    ResumeFrame,
    SendFrame,
    body_of,
    parse_client_frame,
    question,
)

QUOTA = {"feature": "chat", "daily_limit": 5, "used": 1, "remaining": 4, "resets_at": "x"}
CITATION = {"passage_id": "p1", "document_id": "d1", "title": "Rules", "heading": "Setup"}


def answer(*frames: dict[str, Any], aborted: bool = False) -> list[dict[str, Any]]:
    chunks = AnswerChunks()
    out: list[dict[str, Any]] = []
    for frame in frames:
        out += chunks.from_core(frame, "m-2", aborted=aborted)
    return out


STARTED = {"type": "turn.started", "turn_id": "t1", "message_id": "m-1", "quota": QUOTA}


def completed(reason: str, citations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "type": "turn.completed",
        "turn_id": "t1",
        "finish_reason": reason,
        "citations": citations or [],
    }


def test_an_answer_reads_start_text_sources_quota_finish() -> None:
    """A streamed answer maps to start, text parts, one source per citation, quota, finish."""
    chunks = answer(
        STARTED,
        {"type": "turn.delta", "turn_id": "t1", "seq": 1, "text": "Hel"},
        {"type": "turn.delta", "turn_id": "t1", "seq": 2, "text": "lo"},
        completed("stop", [CITATION]),
    )
    assert chunks == [
        {"type": "start", "messageId": "m-2"},
        {"type": "text-start", "id": "text-t1"},
        {"type": "text-delta", "id": "text-t1", "delta": "Hel"},
        {"type": "text-delta", "id": "text-t1", "delta": "lo"},
        {"type": "text-end", "id": "text-t1"},
        {"type": "source-document", "sourceId": "p1", "mediaType": "text/plain", "title": "Rules"},
        {"type": "data-quota", "data": QUOTA, "transient": True},
        {"type": "finish", "finishReason": "stop"},
    ]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("stop", "stop"), ("length", "length"), ("error", "error"), ("cancelled", "other")],
)
def test_finish_reasons_use_the_sdk_names(reason: str, expected: str) -> None:
    """The core's finish reasons become the SDK's (cancelled by someone else is other)."""
    assert answer(STARTED, completed(reason))[-1] == {"type": "finish", "finishReason": expected}


def test_an_abort_by_the_requester_ends_with_an_abort_chunk() -> None:
    """A turn cancelled by this request's abort ends with abort, not finish."""
    chunks = answer(STARTED, completed("cancelled"), aborted=True)
    assert [c["type"] for c in chunks][-2:] == ["data-quota", "abort"]


def test_a_failure_mid_answer_is_an_error_chunk_then_finish() -> None:
    """A provider failure inside the turn is an error chunk with the code, then finish error."""
    chunks = answer(
        STARTED,
        {"type": "turn.delta", "turn_id": "t1", "seq": 1, "text": "Hi"},
        {"type": "error", "turn_id": "t1", "code": "provider_error", "message": "bad stream"},
        completed("error"),
    )
    kinds = [c["type"] for c in chunks]
    assert kinds == [
        "start",
        "text-start",
        "text-delta",
        "error",
        "text-end",
        "data-quota",
        "finish",
    ]
    assert chunks[3]["errorText"].startswith("provider_error: ")
    assert chunks[-1]["finishReason"] == "error"


def test_a_resumed_answer_without_turn_started_still_begins_with_text_start() -> None:
    """A replay that starts at turn.completed still opens with start and text-start."""
    chunks = answer(completed("stop"))
    assert [c["type"] for c in chunks] == ["start", "text-start", "text-end", "finish"]


def test_a_pdf_citation_is_a_pdf_source() -> None:
    """A citation with a page names the PDF media type."""
    chunks = answer(STARTED, completed("stop", [{**CITATION, "page": 3}]))
    assert chunks[3]["mediaType"] == "application/pdf"


def test_sequence_is_contiguous_from_zero_per_request() -> None:
    """Each request numbers its chunks 0, 1, 2 ... on its own."""
    a, b = Sequencer("a"), Sequencer("b")
    seqs = [a.frame({"type": "start"})["sequence"] for _ in range(3)]
    assert seqs == [0, 1, 2]
    assert b.frame({"type": "start"}) == {
        "type": "chunk",
        "requestId": "b",
        "sequence": 0,
        "chunk": {"type": "start"},
    }
    assert a.error("quota_exceeded", "no more")["errorText"] == "quota_exceeded: no more"


def send_frame(**overrides: Any) -> str:
    frame: dict[str, Any] = {
        "type": "send",
        "requestId": "r1",
        "id": "chat_1-A",
        "trigger": "submit-message",
        "messages": [
            {"id": "u0", "role": "user", "parts": [{"type": "text", "text": "old"}]},
            {"id": "a0", "role": "assistant", "parts": [{"type": "text", "text": "answer"}]},
            {
                "id": "u1",
                "role": "user",
                "parts": [
                    {"type": "text", "text": "How do "},
                    {"type": "file", "url": "x", "mediaType": "image/png"},
                    {"type": "text", "text": "I win?"},
                ],
            },
        ],
        "headers": {"authorization": "Bearer t"},
        "body": {"game_id": "g1", "language": "de", "custom": 1},
    }
    frame.update(overrides)
    return json.dumps(frame)


def test_a_send_frame_asks_the_last_user_message() -> None:
    """Only the last user message's text parts, joined, are the question."""
    frame = parse_client_frame(send_frame())
    assert isinstance(frame, SendFrame)
    assert question(list(frame.messages)) == "How do I win?"
    body = body_of(frame)
    assert (body.game_id, body.language, body.provider) == ("g1", "de", None)


def test_resume_and_abort_frames_parse() -> None:
    """resume (with an optional lastSequence) and abort are accepted."""
    resume = parse_client_frame(
        json.dumps({"type": "resume", "requestId": "r", "id": "c", "headers": {}, "body": {}})
    )
    assert isinstance(resume, ResumeFrame) and resume.lastSequence is None
    assert isinstance(parse_client_frame('{"type":"abort","requestId":"r"}'), AbortFrame)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"type":"hello","requestId":"r"}', "unknown frame type"),
        (send_frame(id="a/b"), "id"),
        (send_frame(id="x" * 65), "id"),
        (send_frame(trigger="other"), "trigger"),
        (send_frame(headers={"authorization": 1}), "headers"),
        ('{"type":"resume","requestId":"r","id":"c","lastSequence":-1}', "lastSequence"),
    ],
)
def test_malformed_frames_say_what_is_wrong(raw: str, says: str) -> None:
    """A malformed client frame is InvalidInput naming the problem."""
    with pytest.raises(InvalidInput) as caught:
        parse_client_frame(raw)
    assert says in caught.value.message


def test_a_question_needs_text() -> None:
    """A conversation whose last user message has no text is refused."""
    frame = parse_client_frame(
        send_frame(messages=[{"id": "u", "role": "user", "parts": [{"type": "file"}]}])
    )
    assert isinstance(frame, SendFrame)
    with pytest.raises(InvalidInput):
        question(list(frame.messages))
