"""Anthropic Messages, streamed, through the official ``anthropic`` SDK.

The rulebook passages go in one ``document`` content block of custom content, one
text block per passage, with citations enabled and an ephemeral cache breakpoint;
a citation's ``start_block_index``/``end_block_index`` therefore name passages by
their position, and come back as ``CitationRef``. The system text is
``prompt.system_instructions`` alone (the passages are in the document).

The stream is read from ``messages.with_streaming_response.create(stream=True)``:
the SDK builds the request, authenticates and turns error statuses into its
exceptions, and we read the event stream ourselves from raw bytes (``sse.SSEReader``,
the WHATWG rules: a raw U+2028 inside a JSON string is text, not a line end). That is chosen over
``messages.stream()`` because the helper builds a typed event and re-accumulates the
whole message snapshot for every token (most of the CPU of a turn), and because
holding the raw response lets ``finally`` close it the moment the turn is cancelled.
Event types we do not know are skipped, as Anthropic's versioning policy asks.

Errors are translated at the border (``raise ... from exc``): 429, 503, 529, an
``overloaded_error`` or ``rate_limit_error`` event, connect errors, timeouts and a
stream cut off before ``message_stop`` are ``ProviderUnavailable``; any other status
or error event, and an event that is not a JSON object with a ``type``, are
``ProviderError``. No SDK exception leaves ``stream()``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, Literal

import anthropic
import anyio
import httpx2
from anthropic.types import MessageParam, TextBlockParam

from ..errors import ProviderError, ProviderUnavailable
from .base import (
    CitationRef,
    Finish,
    Passage,
    ProviderRequest,
    StreamEvent,
    TextDelta,
    Usage,
    UsageReport,
    token_count,
)
from .prompt import passage_label, system_instructions
from .sse import event_data
from .transport import DROPPED, MALFORMED, body_chunks, check_event_stream, close_response

__all__ = ["AnthropicProvider"]

_UNAVAILABLE_STATUSES = frozenset({429, 503, 529})
_UNAVAILABLE_ERRORS = frozenset({"overloaded_error", "rate_limit_error"})
_LENGTH_STOPS = frozenset({"max_tokens", "model_context_window_exceeded"})
_DROPPED = DROPPED
_FOREIGN = (anthropic.AnthropicError, httpx2.HTTPError, httpx2.StreamError, *_DROPPED)
_DRAIN_TIMEOUT = 0.1  # after message_stop, wait this long for the body's end


def _translate(exc: BaseException) -> ProviderError:
    """Map an SDK or transport exception to ours (the caller raises it ``from exc``)."""
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        kind = ProviderUnavailable if status in _UNAVAILABLE_STATUSES else ProviderError
        return kind(f"anthropic answered HTTP {status}", context={"status": status})
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderUnavailable("anthropic did not answer in time")
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderUnavailable("could not reach anthropic")
    if isinstance(exc, _DROPPED):
        return ProviderUnavailable("the anthropic stream was cut off")
    return ProviderError(f"anthropic failed ({type(exc).__name__})")


def _document_block(passages: list[Passage], game_name: str) -> dict[str, Any]:
    """The passages as one citable document, content block ``i`` being ``passages[i]``."""
    return {
        "type": "document",
        "source": {
            "type": "content",
            "content": [{"type": "text", "text": p.text} for p in passages],
        },
        "title": f"{game_name} rulebook",
        "context": "Rulebook passages, in this order: "
        + "; ".join(f"{p.id} ({passage_label(p)})" for p in passages),
        "citations": {"enabled": True},
        "cache_control": {"type": "ephemeral"},
    }


class AnthropicProvider:
    """Streams answers from the Anthropic Messages API, with passage citations.

    One instance is shared by every turn; ``stream()`` may run concurrently (the
    SDK's connection pool is the only shared state). The SDK's own retries are off:
    fallback is decided by the caller.
    """

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.model = model
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=anthropic.Timeout(read_timeout, connect=connect_timeout),
            http_client=anthropic.DefaultAioHttpClient(),
        )

    async def aclose(self) -> None:
        """Close the SDK's connection pool."""
        await self._client.close()

    def _system(self, request: ProviderRequest) -> list[TextBlockParam]:
        text = system_instructions(
            request.game_name, request.language, bool(request.passages), request.rules_silent
        )
        if request.system:
            text = f"{text}\n\n{request.system}"
        return [{"type": "text", "text": text}]

    def _messages(self, request: ProviderRequest) -> list[MessageParam]:
        messages: list[MessageParam] = [
            {"role": "user", "content": m.content}
            if m.role == "user"
            else {"role": "assistant", "content": m.content}
            for m in request.messages
        ]
        if request.passages and messages and messages[-1]["role"] == "user":
            question = request.messages[-1].content
            content: Any = [
                _document_block(request.passages, request.game_name),
                {"type": "text", "text": question},
            ]
            messages[-1] = {"role": "user", "content": content}
        return messages

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamEvent]:
        """Stream an early ``UsageReport`` (input tokens), text deltas and citations, then
        the final ``UsageReport`` and one ``Finish``.

        Raises ``ProviderUnavailable`` or ``ProviderError``.
        """
        passages = request.passages
        usage = Usage()
        stop: str | None = None
        done = False
        loads = json.loads
        try:
            async with self._client.messages.with_streaming_response.create(
                model=request.model or self.model,
                max_tokens=request.max_output_tokens,
                system=self._system(request),
                messages=self._messages(request),
                stream=True,
            ) as api_response:
                http = api_response.http_response
                try:
                    check_event_stream(http.headers, "anthropic")
                    chunks = body_chunks(http)
                    async for data in event_data(chunks):
                        try:
                            event = loads(data)
                            kind = event["type"]
                            if kind == "content_block_delta":
                                delta = event["delta"]
                                dtype = delta["type"]
                                if dtype == "text_delta":
                                    if delta["text"]:
                                        yield TextDelta(delta["text"])
                                elif dtype == "citations_delta":
                                    for ref in _citations(delta["citation"], passages):
                                        yield ref
                            elif kind == "message_start":
                                _merge_usage(usage, event["message"].get("usage"))
                                # Counted even if the turn is cancelled or cut later.
                                yield UsageReport(replace(usage), final=False)
                            elif kind == "message_delta":
                                stop = event["delta"].get("stop_reason") or stop
                                _merge_usage(usage, event.get("usage"))
                            elif kind == "message_stop":
                                done = True
                                break
                            elif kind == "error":
                                raise _stream_error(event.get("error"))
                        except MALFORMED as exc:
                            raise ProviderError("anthropic sent a malformed stream event") from exc
                    if done and http.http_version == "HTTP/1.1":
                        # Read the body's end so the connection goes back to the pool.
                        with anyio.move_on_after(_DRAIN_TIMEOUT):
                            async for _ in chunks:
                                pass
                finally:
                    await close_response(http)
        except _FOREIGN as exc:
            raise _translate(exc) from exc
        if not done:
            raise ProviderUnavailable("the anthropic stream ended before message_stop")
        yield UsageReport(usage)
        finish: Literal["stop", "length"] = "length" if stop in _LENGTH_STOPS else "stop"
        yield Finish(finish)


def _stream_error(error: Any) -> ProviderError:
    """An ``event: error`` sent inside the stream (e.g. an overload after the headers)."""
    kind = error.get("type") if isinstance(error, dict) else None
    if kind in _UNAVAILABLE_ERRORS:
        return ProviderUnavailable(f"anthropic reported {kind} mid-stream")
    return ProviderError(f"anthropic reported {kind or 'an error'} mid-stream")


def _citations(citation: dict[str, Any], passages: list[Passage]) -> list[CitationRef]:
    """The passages a content-block citation of our (only) document points at."""
    if citation.get("type") != "content_block_location" or citation.get("document_index"):
        return []
    start = int(citation["start_block_index"])
    end = max(int(citation.get("end_block_index") or start + 1), start + 1)
    quote = citation.get("cited_text") or None
    return [CitationRef(p.id, quote) for p in passages[max(start, 0) : end]]


def _merge_usage(usage: Usage, raw: dict[str, Any] | None) -> None:
    """Fold a usage object in: later events carry cumulative counts, or null."""
    if not raw:
        return
    if raw.get("input_tokens") is not None:
        usage.input_tokens = token_count(raw["input_tokens"])
    if raw.get("output_tokens") is not None:
        usage.output_tokens = token_count(raw["output_tokens"])
    if raw.get("cache_read_input_tokens") is not None:
        usage.cache_read_tokens = token_count(raw["cache_read_input_tokens"])
    if raw.get("cache_creation_input_tokens") is not None:
        usage.cache_creation_tokens = token_count(raw["cache_creation_input_tokens"])
