"""OpenAI Chat Completions, streamed; the ``openai`` SDK for what it knows, aiohttp for the bytes.

Any OpenAI-compatible server works through ``base_url``. The SDK makes the request's
URL and its headers (the key and its own) once per provider, and turns an error status
into its own error (with what the server said); the request is sent and its event
stream read with aiohttp directly (the transport the SDK itself offers,
``DefaultAioHttpClient``, minus httpx2's layers over it): the SDK's ``post()`` copies
its options twice, merges and validates headers, prepares the URL and builds an httpx2
request on every call (9 % of a short turn's CPU in a lockstep burst), and httpx2's
response over aiohttp cost 11 µs more CPU per event than aiohttp's own (38 against
27 µs, ``bench/transports.py``). The body is written by ``json.dumps``; the typed
``chat.completions.create()`` would also transform its parameters (about 2.7 ms for a
14-message prompt). No retries here (the caller decides fallback). The raw bytes are
read by ``sse.SSEReader`` (the WHATWG rules) and each event's data parsed with
``json.loads``, because the SDK's typed chunks cost most of the CPU of a token. An
answer that is not an event stream is a ``ProviderError`` saying so.

Errors are translated at the border (``raise ... from exc``): 429, 503, 529,
connect errors, timeouts (connect, and a read that waits past ``read_timeout``) and a
stream cut off before its end are ``ProviderUnavailable``; any other status, a line
that is not JSON or an in-stream error object are ``ProviderError``. No SDK or aiohttp
exception leaves ``stream()``.

Cancellation: cancelling the consuming task, or closing the generator, closes the
upstream connection at once in a ``finally``: the server sees the connection closed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiohttp
import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

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
from .sse import SSEReader
from .transport import DROPPED, MALFORMED, check_event_stream, environment_proxy

__all__ = ["OpenAIProvider"]

_UNAVAILABLE_STATUSES = frozenset({429, 503, 529})
# A connection that broke or stalled: the provider is unreachable, not wrong.
_DROPPED = DROPPED
_DRAIN_TIMEOUT = 0.1  # after [DONE], wait this long for the body's end (keeps the connection)
_ERROR_BODY_TIMEOUT = 2.0  # an error status's body, for the SDK's error: read this long
_loads = json.loads
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _status_error(status: int) -> ProviderError:
    kind = ProviderUnavailable if status in _UNAVAILABLE_STATUSES else ProviderError
    return kind(f"openai answered HTTP {status}", context={"status": status})


def _stream_error(error: Any) -> ProviderError:
    """An ``{"error": ...}`` object sent inside the stream."""
    text = json.dumps(error, default=str).lower()
    if any(word in text for word in ("overloaded", "rate_limit", "unavailable", "capacity")):
        return ProviderUnavailable("openai reported an overload mid-stream")
    return ProviderError("openai reported an error mid-stream")


class _Events:
    """What one response's event stream said so far, fed one event's data at a time.

    Each event holds one JSON object; ``[DONE]`` ends the stream.
    """

    __slots__ = ("done", "finish", "usage")

    def __init__(self) -> None:
        self.done = False
        self.finish: Literal["stop", "length"] | None = None
        self.usage: Usage | None = None

    def data(self, data: str) -> str | None:
        """The text this event adds, if any; raises ``ProviderError`` on a bad event."""
        if data.startswith("[DONE]"):
            self.done = True
            return None
        try:
            chunk = _loads(data)
            error = chunk.get("error")
            if error:
                raise _stream_error(error)
            choices = chunk.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                text = delta.get("content") if delta else None
                reason = choice.get("finish_reason")
                if reason:
                    self.finish = "length" if reason == "length" else "stop"
            else:
                text = None
            if chunk.get("usage"):
                self.usage = _usage(chunk["usage"])
        except MALFORMED as exc:
            raise ProviderError("openai sent a malformed stream event") from exc
        return text


class OpenAIProvider:
    """Streams answers from an OpenAI-compatible Chat Completions endpoint.

    One instance is shared by every turn; ``stream()`` may run concurrently (the
    SDK's connection pool is the only shared state). The SDK's own retries are off:
    fallback is decided by the caller.
    """

    name = "openai"

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
        timeout = openai.Timeout(read_timeout, connect=connect_timeout)
        # The SDK's client sends nothing: it knows the URL, the headers and the errors.
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
        )
        # What post("/chat/completions") would send besides the body, made once.
        base = self._client.base_url  # the SDK ends it with "/"
        self._url = str(base.copy_with(raw_path=base.raw_path + b"chat/completions"))
        headers = {**self._client.default_headers, **self._client.auth_headers}
        self._headers = {
            name: value for name, value in headers.items() if isinstance(value, str)
        } | {"X-Stainless-Retry-Count": "0", "X-Stainless-Read-Timeout": str(read_timeout)}
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None  # made in the loop, on first use
        self._proxy: str | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Pooled and kept alive as the SDK's aiohttp client does; no limit on
            # connections per host (the SDK's is 1,000; the turns are bounded elsewhere).
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
            )
            self._proxy = environment_proxy(self._url)
        return self._session

    async def aclose(self) -> None:
        """Close the connection pool (and the SDK's, unused)."""
        if self._session is not None:
            await self._session.close()
        await self._client.close()

    def _body(self, request: ProviderRequest) -> dict[str, Any]:
        """The request body ``chat.completions.create()`` would send for these fields."""
        system = system_prompt(
            request.game_name, request.language, request.passages, request.rules_silent
        )
        if request.system:
            system = f"{system}\n\n{request.system}"
        messages: list[ChatCompletionMessageParam] = [{"role": "system", "content": system}]
        for message in request.messages:
            if message.role == "user":
                messages.append({"role": "user", "content": message.content})
            else:
                messages.append({"role": "assistant", "content": message.content})
        return {
            "model": request.model or self.model,
            "stream": True,
            "messages": messages,
            "max_completion_tokens": request.max_output_tokens,
            "stream_options": {"include_usage": True},
        }

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamEvent]:
        """Stream text deltas, then one ``UsageReport`` and one ``Finish``.

        Raises ``ProviderUnavailable`` or ``ProviderError``; ``UsageReport`` holds
        zeros when the server reported no usage.
        """
        events = _Events()
        try:
            http = await self._send(self._body(request))
            try:
                check_event_stream(http.headers, "openai")
                chunks = http.content.iter_any()
                reader = SSEReader()
                async for chunk in chunks:
                    for _event, data in reader.feed(chunk):
                        text = events.data(data)
                        if text:
                            yield TextDelta(text)
                        elif events.done:
                            break
                    if events.done:
                        break
                else:
                    for _event, data in reader.close():  # the body ended without a blank line
                        text = events.data(data)
                        if text:
                            yield TextDelta(text)
                if events.done and http.version == aiohttp.HttpVersion11:
                    # Read the body's end so the connection goes back to the pool.
                    try:
                        async with asyncio.timeout(_DRAIN_TIMEOUT):
                            async for _ in chunks:
                                pass
                    except TimeoutError:
                        pass
                    else:
                        http.release()
            finally:
                http.close()  # no-op once released; else the connection is closed now
        except _DROPPED as exc:  # the only foreign errors left: the SDK sends nothing
            raise ProviderUnavailable("the openai stream was cut off") from exc
        if not events.done and events.finish is None:
            raise ProviderUnavailable("the openai stream ended before its last event")
        yield UsageReport(events.usage or Usage())
        yield Finish(events.finish or "stop")

    async def _send(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST the body; the response unread (its body streams, ours to close), or
        ``ProviderError`` / ``ProviderUnavailable`` for an error status or no answer."""
        try:
            http = await self._http().request(
                "POST",
                self._url,
                data=_dumps(body).encode(),
                headers=self._headers,
                proxy=self._proxy,
            )
        except TimeoutError as exc:  # aiohttp's connect and read timeouts are TimeoutErrors
            raise ProviderUnavailable("openai did not answer in time") from exc
        except _DROPPED as exc:
            raise ProviderUnavailable("could not reach openai") from exc
        if http.status >= 400:  # the SDK's error, with what the server said
            try:
                async with asyncio.timeout(_ERROR_BODY_TIMEOUT):
                    content = await http.read()
            except (*_DROPPED, TimeoutError):  # no body to tell: the status alone
                content = b""
            finally:
                http.close()
            response = httpx2.Response(
                http.status,
                headers=[  # the body is decoded already
                    (name, value)
                    for name, value in http.headers.items()
                    if name.lower() not in ("content-encoding", "content-length")
                ],
                content=content,
                request=httpx2.Request("POST", self._url),
            )
            error = self._client._make_status_error_from_response(response)
            raise _status_error(error.status_code) from error
        return http


def _usage(raw: dict[str, Any]) -> Usage:
    details = raw.get("prompt_tokens_details") or {}
    return Usage(
        input_tokens=token_count(raw.get("prompt_tokens")),
        output_tokens=token_count(raw.get("completion_tokens")),
        cache_read_tokens=token_count(details.get("cached_tokens")),
    )
