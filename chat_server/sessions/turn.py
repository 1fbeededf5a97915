"""One turn's rules, with no I/O: sequencing deltas, merging, replay, the final frame.

The turn's text grows as the provider streams. A follower *pulls* deltas with
``take_delta()`` when it is ready to send: whatever arrived since the last pull goes
out as one delta with the next ``seq`` (so a slow client gets fewer, bigger deltas and
nothing is dropped), at most ``max_delta`` characters a delta: a longer run of text
goes out over several pulls. ``resume(after_seq)`` rewinds delivery to what a reconnecting
client has, so the next pull carries exactly the text it missed: concatenating every
delta a client saw gives the full answer, with no gap in ``seq`` and no duplicate.

Several followers share the numbering: each holds a ``Cursor`` (``follower.py``), the
first to pull cuts the next delta and the others get the same one (``delta(seq)``),
so every follower sees the same ``seq`` for the same text. A turn that runs on another
instance is mirrored here with the owner's cuts (``add_delta``).

Not thread-safe; used from one event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from ..accounting import settle
from ..document_files import document_url
from ..prices import PriceTable, total_input
from ..providers.base import CitationRef, ProviderRequest, Usage
from ..rulebooks import Passage
from ..storage.chat import TurnRecord

__all__ = ["FinishReason", "Turn"]

FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(eq=False, slots=True)
class Turn:
    """A running (then finished) turn of a session.

    ``user_message_id`` and ``message_id`` are known once the question is stored,
    which may be after the provider was asked (``TurnManager.begin``).
    """

    id: str
    session_id: str
    user_id: str
    game_id: str
    provider: str
    model: str
    client_id: str | None
    started_at: float
    user_message_id: str = ""
    message_id: str = ""
    passages: list[Passage] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    pending_parts: list[str] = field(default_factory=list)
    length: int = 0
    tokens: int = 0
    seq: int = 0
    offsets: list[int] = field(default_factory=lambda: [0])
    #: the delta of ``seq`` as it was cut, shared by every follower that sends it
    last_delta: dict[str, Any] | None = None
    first_token_at: float | None = None
    usage: Usage = field(default_factory=Usage)
    usage_reported: bool = False  # a provider reported usage (``usage`` is its last report)
    usage_final: bool = False  # ... and that report was the end-of-stream one
    estimated: bool = False  # some of ``usage`` is an estimate (``settle_usage``)
    cost_usd: float | None = None
    cited: dict[str, str | None] = field(default_factory=dict)
    finish_reason: FinishReason | None = None
    error_code: str | None = None
    finished_at: float | None = None
    cancel_requested: bool = False
    quota_at: datetime | None = None
    max_delta: int = 8192  # characters of one delta at most (WS_MAX_DELTA_CHARS)

    # -- streaming -------------------------------------------------------------
    def add_text(self, text: str, now: float) -> None:
        if not text:
            return
        if self.first_token_at is None:
            self.first_token_at = now
        self.parts.append(text)
        self.pending_parts.append(text)
        self.length += len(text)
        self.tokens += 1

    def cite(self, ref: CitationRef) -> None:
        self.cited.setdefault(ref.passage_id, ref.quote)

    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    @property
    def has_text(self) -> bool:
        return self.length > 0

    @property
    def pending(self) -> bool:
        return self.length > self.offsets[-1]

    def take_delta(self) -> dict[str, Any] | None:
        """The next delta frame (text not yet delivered, ``max_delta`` at most), or None."""
        start = self.offsets[-1]
        if self.length <= start:
            return None
        # O(pending) in the common case; a rewound delivery (resume) slices the whole text.
        pending = self.pending_parts
        text = "".join(pending) if pending else self.text[start:]
        if len(text) != self.length - start:
            text = self.text[start:]
        pending.clear()
        if len(text) > self.max_delta:  # the rest waits for the next pull
            pending.append(text[self.max_delta :])
            text = text[: self.max_delta]
        self.seq += 1
        self.offsets.append(start + len(text))
        frame = {"type": "turn.delta", "turn_id": self.id, "seq": self.seq, "text": text}
        self.last_delta = frame
        return frame

    def delta(self, seq: int) -> dict[str, Any]:
        """The delta ``seq`` (1 ≤ seq ≤ ``self.seq``) as it was cut: the same object for
        every follower when it is the latest, else sliced again from the text."""
        last = self.last_delta
        if last is not None and last["seq"] == seq:
            return last
        offsets = self.offsets
        text = self.text[offsets[seq - 1] : offsets[seq]]
        return {"type": "turn.delta", "turn_id": self.id, "seq": seq, "text": text}

    def add_delta(self, frame: dict[str, Any], now: float) -> bool:
        """Mirror a delta cut by the instance that runs the turn (its ``seq`` kept).

        False (and nothing changes) unless it is the next one.
        """
        if frame["seq"] != self.seq + 1:
            return False
        text: str = frame["text"]
        if self.first_token_at is None:
            self.first_token_at = now
        self.parts.append(text)
        self.length += len(text)
        self.tokens += 1
        self.seq += 1
        self.offsets.append(self.length)
        self.last_delta = frame
        return True

    def resume(self, after_seq: int) -> None:
        """A client that saw deltas up to ``after_seq`` comes back (alone: the deltas
        after it are cut again, as one)."""
        keep = max(0, min(after_seq, self.seq))
        del self.offsets[keep + 1 :]
        self.seq = keep
        self.last_delta = None
        self.pending_parts.clear()  # the next delta is sliced from the whole text

    def report_usage(self, usage: Usage, final: bool) -> None:
        self.usage, self.usage_reported, self.usage_final = usage, True, final

    # -- ending ----------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def settle_usage(self, prices: PriceTable, request: ProviderRequest) -> None:
        """Once finished: count what the provider did not report, and price it."""
        settled = settle(
            self.usage if self.usage_reported else None,
            final=self.usage_final,
            answer_chars=self.length,
            request=request,
            failed=self.finish_reason == "error",
        )
        self.usage, self.estimated = settled.usage, settled.estimated
        self.cost_usd = prices.cost(self.provider, self.model, self.usage)

    def finish(self, reason: FinishReason, now: float, error_code: str | None = None) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self.error_code = error_code
            self.finished_at = now

    def drop_text(self) -> bool:
        """Make the record an ``internal_error`` without text, citations, usage or cost
        (the answer could not be stored as it was: nothing the provider sent is kept, so
        the store takes it); False when it already is one."""
        if (
            self.error_code == "internal_error"
            and not self.length
            and not self.cited
            and self.usage == Usage()
            and self.cost_usd is None
        ):
            return False
        self.parts.clear()
        self.pending_parts.clear()
        self.length = 0
        self.cited.clear()
        self.passages = []
        self.usage, self.estimated, self.cost_usd = Usage(), False, None
        self.finish_reason, self.error_code = "error", "internal_error"
        return True

    @property
    def status(self) -> str:
        """The stored message status for this turn's end."""
        return {"stop": "complete", "length": "complete", "cancelled": "cancelled"}.get(
            self.finish_reason or "", "error"
        )

    def citations(self) -> list[dict[str, Any]]:
        """The passages the answer rests on: those the model cited, else those it was given."""
        by_id = {p.id: p for p in self.passages}
        ids = [pid for pid in self.cited if pid in by_id] or (list(by_id) if self.has_text else [])
        out = []
        for pid in ids:
            p = by_id[pid]
            quote = self.cited.get(pid) or p.text[:200]
            out.append(
                {
                    "passage_id": pid,
                    "document_id": p.document_id,
                    "title": p.title,
                    "heading": p.heading,
                    "page": p.page,
                    "url": document_url(self.game_id, p.document_id, p.page),
                    "offset": p.ordinal,
                    "quote": quote,
                }
            )
        return out

    def _ms(self, at: float | None) -> int | None:
        return None if at is None else max(0, round((at - self.started_at) * 1000))

    def completed_frame(self) -> dict[str, Any]:
        return {
            "type": "turn.completed",
            "turn_id": self.id,
            "message_id": self.message_id,
            "finish_reason": self.finish_reason,
            "provider": self.provider,
            "model": self.model,
            "usage": {
                "input_tokens": total_input(
                    self.provider,
                    self.usage.input_tokens,
                    self.usage.cache_read_tokens,
                    self.usage.cache_creation_tokens,
                ),
                "output_tokens": self.usage.output_tokens,
                "estimated": self.estimated,
                "cost_usd": self.cost_usd,
            },
            "citations": self.citations(),
            "timing": {
                "first_token_ms": self._ms(self.first_token_at),
                "total_ms": self._ms(self.finished_at) or 0,
            },
        }

    def started_frame(self, quota: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "turn.started",
            "turn_id": self.id,
            "message_id": self.user_message_id,
            "client_id": self.client_id,
            "quota": quota,
        }

    def record(self) -> TurnRecord:
        return TurnRecord(
            message_id=self.message_id,
            turn_id=self.id,
            session_id=self.session_id,
            user_id=self.user_id,
            game_id=self.game_id,
            provider=self.provider,
            model=self.model,
            content=self.text,
            status=self.status,
            finish_reason=self.finish_reason or "error",
            citations=self.citations(),
            input_tokens=self.usage.input_tokens,
            output_tokens=self.usage.output_tokens,
            cache_read_tokens=self.usage.cache_read_tokens,
            cache_creation_tokens=self.usage.cache_creation_tokens,
            estimated=self.estimated,
            cost_usd=self.cost_usd,
            first_token_ms=self._ms(self.first_token_at),
            total_ms=self._ms(self.finished_at) or 0,
            error_code=self.error_code,
        )

    def live_message(self) -> dict[str, Any]:
        """The assistant message as history shows it while the turn runs."""
        return {
            "id": self.message_id,
            "role": "assistant",
            "content": self.text,
            "status": "streaming" if not self.done else self.status,
            "turn_id": self.id,
        }
