"""Google Gemini, streamed, through the official ``google-genai`` SDK.

``client.aio.models.generate_content_stream`` with the passages in the system
instruction (``prompt.system_prompt``). The SDK's retries are off (its default
``retry_options`` of ``None`` is one attempt) and automatic function calling is
disabled; its automatic *continuation* (long answers delivered over several
requests) is left on, as it is how the API completes an answer.

Timeouts: ``HttpOptions.timeout`` is a single number applied to every phase, so
the connect and read timeouts are set on each request by an httpx2 ``request``
event hook instead. A ``response`` hook hands the streaming response to the
``stream()`` that caused it (through a context variable, as the hooks run in the
caller's task), so that ``finally`` can close it the moment the turn is cancelled:
the SDK's nested generators would otherwise only close it when garbage-collected.

The event stream is re-framed on its way to the SDK (``_Reframed``): read by the
WHATWG rules (``sse.SSEReader``), written back in the plain framing the SDK's reader
understands. An answer that is not an event stream is a ``ProviderError`` saying so.

Errors are translated at the border (``raise ... from exc``): 429, 503, 529,
connect errors, timeouts and a stream cut off before its final chunk are
``ProviderUnavailable``; any other status (also sent as an in-stream error object)
and a chunk that is not the expected JSON are ``ProviderError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any, Literal

import anyio
import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from ..errors import ProviderError, ProviderUnavailable
from .base import (
    Finish,
    ProviderRequest,
    StreamEvent,
    TextDelta,
    Usage,
    UsageReport,
    token_count,
)
from .prompt import system_prompt
from .sse import SSEReader, reframe
from .transport import CLOSE_TIMEOUT, DROPPED, MALFORMED, check_event_stream, close_response

__all__ = ["GeminiProvider"]

_UNAVAILABLE_STATUSES = frozenset({429, 503, 529})
_LENGTH_REASONS = frozenset({"MAX_TOKENS", "CONTINUATION"})
_DROPPED = DROPPED
# The SDK raises its APIError family, lets httpx2 errors through unwrapped, and
# reports a chunk it cannot parse as a ValueError (UnknownApiResponseError, or a
# pydantic ValidationError), one of ``MALFORMED``.
_FOREIGN = (genai_errors.APIError, httpx2.HTTPError, httpx2.StreamError, *_DROPPED, *MALFORMED)

# The streaming responses opened by the current stream() call, filled by the hook.
_open_responses: ContextVar[list[httpx2.Response] | None] = ContextVar(
    "gemini_open_responses", default=None
)


class _Reframed(httpx2.AsyncByteStream):
    """The upstream's event stream read by the WHATWG rules, written back plainly.

    The SDK's own reader takes only ``data: `` lines with the space and no leading
    BOM, and reads comments and ``event:`` lines as JSON; after ``sse.SSEReader`` it
    gets every event as ``data: `` lines ended by LF.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reader = SSEReader()
        async for chunk in self._inner:
            events = reader.feed(chunk)
            if events:
                yield reframe(events)
        events = reader.close()  # the body ended whole: an event left without its blank line
        if events:
            yield reframe(events)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _translate(exc: BaseException) -> ProviderError:
    """Map an SDK or transport exception to ours (the caller raises it ``from exc``)."""
    if isinstance(exc, genai_errors.APIError):
        status = exc.code
        kind = ProviderUnavailable if status in _UNAVAILABLE_STATUSES else ProviderError
        return kind(f"gemini answered HTTP {status}", context={"status": status})
    if isinstance(exc, httpx2.TimeoutException):
        return ProviderUnavailable("gemini did not answer in time")
    if isinstance(exc, httpx2.ConnectError):
        return ProviderUnavailable("could not reach gemini")
    if isinstance(exc, _DROPPED):
        return ProviderUnavailable("the gemini stream was cut off")
    if isinstance(exc, (httpx2.HTTPError, httpx2.StreamError)):
        return ProviderError(f"gemini failed ({type(exc).__name__})")
    return ProviderError("gemini sent a malformed stream event")


class GeminiProvider:
    """Streams answers from the Gemini API (or a server speaking its REST protocol).

    One instance is shared by every turn; ``stream()`` may run concurrently (the
    SDK's connection pool is the only shared state).
    """

    name = "gemini"

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
        timeout = httpx2.Timeout(read_timeout, connect=connect_timeout).as_dict()

        async def set_timeouts(request: httpx2.Request) -> None:
            request.extensions["timeout"] = timeout
            # Uncompressed, so that the stream can be re-framed (_Reframed) on its way.
            request.headers["accept-encoding"] = "identity"

        async def track_response(response: httpx2.Response) -> None:
            opened = _open_responses.get()
            if opened is not None:
                opened.append(response)
            if response.is_success:
                check_event_stream(response.headers, "gemini")
                if response.headers.get("content-encoding", "identity") == "identity":
                    response.stream = _Reframed(response.stream)

        # Our own httpx2 client, not aiohttp (which the SDK picks when it is
        # installed): the hooks above need httpx2. Handing over a whole client rather
        # than naming a transport keeps httpx2 reading HTTP(S)_PROXY / NO_PROXY (it
        # skips them when a transport is named). The SDK leaves a client it was given
        # open; ``aclose()`` closes it.
        self._http = httpx2.AsyncClient(
            event_hooks={"request": [set_timeouts], "response": [track_response]}
        )
        self._client = genai.Client(
            vertexai=False,
            api_key=api_key,
            http_options=types.HttpOptions(base_url=base_url, httpx_async_client=self._http),
        )

    async def aclose(self) -> None:
        """Close the connection pools (ours, and the SDK's unused sync one)."""
        await self._client.aio.aclose()
        await self._http.aclose()
        self._client.close()

    def _config(self, request: ProviderRequest) -> types.GenerateContentConfig:
        system = system_prompt(
            request.game_name, request.language, request.passages, request.rules_silent
        )
        if request.system:
            system = f"{system}\n\n{request.system}"
        return types.GenerateContentConfig(
            system_instruction=system,
            max_output_tokens=request.max_output_tokens,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )

    @staticmethod
    def _contents(request: ProviderRequest) -> list[types.ContentDict]:
        return [
            {"role": "user" if m.role == "user" else "model", "parts": [{"text": m.content}]}
            for m in request.messages
        ]

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamEvent]:
        """Stream an early ``UsageReport`` (the prompt's tokens, from the first chunk),
        text deltas, then the final ``UsageReport`` and one ``Finish``.

        Raises ``ProviderUnavailable`` or ``ProviderError``.
        """
        opened: list[httpx2.Response] = []
        token = _open_responses.set(opened)
        chunks: AsyncIterator[types.GenerateContentResponse] | None = None
        usage: Usage | None = None
        reason: str | None = None
        try:
            chunks = await self._client.aio.models.generate_content_stream(
                model=request.model or self.model,
                contents=self._contents(request),
                config=self._config(request),
            )
            async for chunk in chunks:
                if chunk.usage_metadata is not None:
                    early = usage is None  # the first chunk already counts the prompt
                    usage = _usage(chunk.usage_metadata)
                    if early and usage.input_tokens:  # counted even if the turn is cut
                        prompt = Usage(usage.input_tokens, 0, usage.cache_read_tokens)
                        yield UsageReport(prompt, final=False)
                if chunk.prompt_feedback is not None and chunk.prompt_feedback.block_reason:
                    raise ProviderError("gemini refused the prompt")
                if not chunk.candidates:
                    continue
                candidate = chunk.candidates[0]
                if candidate.finish_reason is not None:
                    reason = _reason(candidate.finish_reason)
                content = candidate.content
                for part in (content.parts or []) if content is not None else []:
                    if part.text and not part.thought:
                        yield TextDelta(part.text)
        except _FOREIGN as exc:
            raise _translate(exc) from exc
        finally:
            # ValueError: finalised from another context, nothing of ours to restore.
            with contextlib.suppress(ValueError):
                _open_responses.reset(token)
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                for response in opened:
                    await close_response(response)
                if chunks is not None and hasattr(chunks, "aclose"):
                    # It may raise what the stream already raised; it is closed all the same.
                    with contextlib.suppress(*_FOREIGN):
                        await chunks.aclose()
        if reason is None:
            raise ProviderUnavailable("the gemini stream ended before its final chunk")
        yield UsageReport(usage or Usage())
        finish: Literal["stop", "length"] = "length" if reason in _LENGTH_REASONS else "stop"
        yield Finish(finish)


def _reason(value: Any) -> str:
    """A finish reason as its name (the SDK gives an enum, or a string it did not know)."""
    return str(getattr(value, "value", value))


def _usage(meta: types.GenerateContentResponseUsageMetadata) -> Usage:
    """Thinking tokens are billed as output, so they count as output here (their sum
    is a count too: ``token_count`` checks it)."""
    output = token_count(meta.candidates_token_count) + token_count(meta.thoughts_token_count)
    return Usage(
        input_tokens=token_count(meta.prompt_token_count),
        output_tokens=token_count(output),
        cache_read_tokens=token_count(meta.cached_content_token_count),
    )
