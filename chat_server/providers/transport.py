"""What the three SDK adapters share about the HTTP stream underneath them.

The openai, anthropic and google-genai SDKs all speak httpx2. The openai and anthropic
clients are built with the SDKs' own aiohttp transport (``DefaultAioHttpClient``):
reading a stream through it costs about 40 % of the CPU per event of httpx2's
default transport (``bench/transports.py``), the largest single cost of a token.
google-genai stays on httpx2's transport (its adapter needs httpx2's event hooks).

A connection dropped mid-stream, or an answer that is not HTTP, surfaces as a raw
httpx2, anyio or aiohttp error, not an SDK one (``DROPPED``); an event that is not what
its vendor's format says, as one of the errors that reading it raises (``MALFORMED``,
a ``provider_error``). An upstream response must be closed at once, even inside a
cancelled scope (``close_response``), so that a cancelled turn stops paying for tokens.

An answer to a stream request that is not an event stream (a JSON body from a proxy,
an HTML error page with status 200) is a ``ProviderError`` saying what came
(``check_event_stream``), not a stream that looks cut off.
"""

from __future__ import annotations

import contextlib
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping

import aiohttp
import anyio
import httpx2

from ..errors import ProviderError

__all__ = [
    "CLOSE_TIMEOUT",
    "DROPPED",
    "MALFORMED",
    "body_chunks",
    "check_event_stream",
    "close_response",
    "environment_proxy",
]

CLOSE_TIMEOUT = 2.0  # seconds a shielded close of the upstream response may take

DROPPED = (
    httpx2.TimeoutException,
    httpx2.NetworkError,
    httpx2.RemoteProtocolError,
    httpx2.ProxyError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    ssl.SSLError,
    ConnectionError,
    aiohttp.ClientError,  # through the aiohttp transport: not mapped to httpx2 by the SDK
)

# What reading a malformed event raises: a missing key or a value of the wrong kind,
# and int() of a number past the range of a float (1e400 parses to infinity).
MALFORMED = (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError)


async def close_response(response: httpx2.Response) -> None:
    """Close the upstream response now, even inside a cancelled AnyIO scope."""
    with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
        # Closing a broken connection may fail; it is gone either way.
        with contextlib.suppress(httpx2.HTTPError, aiohttp.ClientError, OSError):
            await response.aclose()


def check_event_stream(headers: Mapping[str, str], provider: str) -> None:
    """Raise ``ProviderError`` unless the response is ``text/event-stream``."""
    kind = headers.get("content-type", "")
    if kind.split(";", 1)[0].strip().lower() != "text/event-stream":
        shown = kind.split(";", 1)[0].strip()[:80] or "no content type"
        raise ProviderError(
            f"{provider} answered {shown}, not an event stream",
            context={"content_type": shown},
        )


def body_chunks(http: httpx2.Response) -> AsyncIterator[bytes]:
    """The body's bytes: raw unless compressed (one iterator layer less per chunk)."""
    identity = http.headers.get("content-encoding", "identity") == "identity"
    return http.aiter_raw() if identity else http.aiter_bytes()


def environment_proxy(url: str) -> str | None:
    """The egress proxy the environment names for ``url``, as httpx2 would pick it:
    ``<scheme>_PROXY``, else ``ALL_PROXY``, unless ``NO_PROXY`` exempts the host
    (aiohttp's ``trust_env`` would ignore ``ALL_PROXY``)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"
