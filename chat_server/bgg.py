"""BoardGameGeek XML API2 client: games by id, with BGG's queue and throttling waited out.

Staff import games from BGG (``POST /admin/games/import``). BGG answers ``202`` while it
queues a request and ``429``/``503`` while it throttles, and it now refuses callers
without a registered application token. This module hides that behind
``BggClient.fetch``/``fetch_one`` and reports every failure as one ``UpstreamError``
whose ``error_code`` says what to do about it:

    BGG_UNAVAILABLE   still queued/throttled after ``max_wait`` seconds, connect error, timeout
    BGG_UNAUTHORIZED  401/403: BGG_API_TOKEN is missing or rejected
    BGG_ERROR         any other status, or an ``<error>`` document
    BGG_BAD_RESPONSE  malformed XML, a DTD/entity declaration, an oversized body

``fetch_one`` raises ``NotFound`` when BGG has no such item.

XML is parsed by ``parse_things``, which is pure (no I/O), with defusedxml: a DTD,
entity declarations and external references are refused, never expanded. The body is
capped at ``max_bytes`` (after content decoding) and always parsed in a worker thread
(``asyncio.to_thread``): 20 items with statistics can be a few hundred kilobytes, and a
thread hop is nothing next to a BGG round trip.
"""

from __future__ import annotations

import asyncio
import email.utils
import html
import logging
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import defusedxml.ElementTree as SafeET
import httpx
from defusedxml import DefusedXmlException

from chat_server.errors import InvalidInput, NotFound, UpstreamError

__all__ = ["MAX_IDS_PER_REQUEST", "BggClient", "BggGame", "parse_things"]

log = logging.getLogger(__name__)

MAX_IDS_PER_REQUEST = 20
"""BGG's limit on ids in one ``thing`` request (more is answered with an error)."""

_RETRY_STATUSES = frozenset({202, 429, 503})
_USER_AGENT = "chat-server-bgg/0.1"


@dataclass(frozen=True)
class BggGame:
    """One BGG item, as much of it as a Game row holds; ``rating`` is the BGG average."""

    bgg_id: int
    name: str
    min_players: int | None
    max_players: int | None
    playing_time: int | None
    rating: float | None
    thumbnail_url: str | None
    image_url: str | None
    year_published: int | None
    description: str | None


def _bad(message: str) -> UpstreamError:
    return UpstreamError(
        f"BoardGameGeek sent a bad response: {message}", error_code="BGG_BAD_RESPONSE"
    )


def _value(item: ET.Element, path: str) -> str | None:
    node = item.find(path)
    if node is None:
        return None
    value = node.get("value")
    return value.strip() if value is not None and value.strip() else None


def _int(item: ET.Element, path: str, *, positive: bool = True) -> int | None:
    """BGG writes 0 for an unknown count, time or year; that becomes None."""
    raw = _value(item, path)
    try:
        number = int(raw) if raw is not None else None
    except ValueError:
        return None
    if number is None or number == 0 or (positive and number < 0):
        return None
    return number


def _float(item: ET.Element, path: str) -> float | None:
    raw = _value(item, path)
    try:
        number = float(raw) if raw is not None else None
    except ValueError:
        return None
    # An average of 0 means nobody rated it yet.
    return number if number is not None and math.isfinite(number) and number > 0 else None


def _text(item: ET.Element, path: str) -> str | None:
    node = item.find(path)
    if node is None or node.text is None:
        return None
    text = node.text.strip()
    return text or None


def _url(item: ET.Element, path: str) -> str | None:
    """An http(s) URL, or None (a protocol-relative ``//host/...`` is taken as https)."""
    text = _text(item, path)
    if text and text.startswith("//"):
        text = "https:" + text
    return text if text and text[:8].lower().startswith(("http://", "https://")) else None


def _name(item: ET.Element, bgg_id: int) -> str:
    names = item.findall("name")
    primary = [n for n in names if n.get("type") == "primary"]
    for node in primary + names:
        value = (node.get("value") or "").strip()
        if value:
            return value
    raise _bad(f"item {bgg_id} has no name")


def _game(item: ET.Element) -> BggGame:
    try:
        bgg_id = int(item.get("id", ""))
    except ValueError:
        raise _bad(f"item without a numeric id: {item.get('id')!r}") from None
    # BGG escapes HTML entities twice: "&amp;#10;" is the text "&#10;", a newline.
    raw_description = _text(item, "description")
    description = html.unescape(raw_description).strip() if raw_description else None
    return BggGame(
        bgg_id=bgg_id,
        name=_name(item, bgg_id),
        min_players=_int(item, "minplayers"),
        max_players=_int(item, "maxplayers"),
        playing_time=_int(item, "playingtime"),
        rating=_float(item, "statistics/ratings/average"),
        thumbnail_url=_url(item, "thumbnail"),
        image_url=_url(item, "image"),
        year_published=_int(item, "yearpublished", positive=False),  # BC years < 0
        description=description or None,
    )


def parse_things(body: bytes) -> list[BggGame]:
    """Parse a ``thing?stats=1`` answer; refuse DTDs and entities rather than expand them.

    CPU-bound and synchronous: callers on the event loop run it in a thread.
    """
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise _bad(f"refused XML with {type(exc).__name__}") from exc
    except ET.ParseError as exc:
        raise _bad(f"malformed XML ({exc})") from exc
    if root.tag in ("error", "errors"):
        message = " ".join(t.strip() for t in root.itertext() if t.strip()) or "unknown error"
        raise UpstreamError(
            f"BoardGameGeek answered with an error: {message}", error_code="BGG_ERROR"
        )
    if root.tag != "items":
        raise _bad(f"expected <items>, got <{root.tag}>")
    return [_game(item) for item in root.findall("item")]


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), if usable."""
    raw = response.headers.get("retry-after", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class BggClient:
    """Fetches games from BGG's XML API2 ``thing`` endpoint.

    Made once (in the app's lifespan) and shared: calls are independent and safe to run
    concurrently; they share one connection pool. Cancelling a call cancels its request
    or its backoff sleep at once (a parse already running in its worker thread finishes
    and is discarded).
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None,
        timeout: float = 10.0,
        max_wait: float = 30.0,
        http: httpx.AsyncClient | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        """``timeout`` bounds each wait for BGG (connect, a read) and, three times over, one
        whole request; ``max_wait`` bounds the total time spent retrying 202/429/503 in one call;
        ``backoff`` is the first delay (doubled each retry, capped at ``max_backoff``,
        which also caps Retry-After); ``max_bytes`` caps a response body."""
        self._base_url = base_url.rstrip("/")
        self._token = token
        self._request_timeout = 3 * timeout
        self._max_wait = max_wait
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._max_bytes = max_bytes
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(connect=timeout, read=timeout, write=timeout, pool=timeout),
            limits=httpx.Limits(
                max_connections=4, max_keepalive_connections=2, keepalive_expiry=30.0
            ),
            headers={"User-Agent": _USER_AGENT},
        )

    async def __aenter__(self) -> BggClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool, unless it was passed in (then its owner closes it)."""
        if self._owns_http:
            await self._http.aclose()

    async def fetch_one(self, bgg_id: int) -> BggGame:
        """One game; ``NotFound`` when BGG has no item with that id."""
        games = await self.fetch([bgg_id])
        if not games:
            raise NotFound(f"BoardGameGeek has no item {bgg_id}", context={"bgg_id": bgg_id})
        return games[0]

    async def fetch(self, bgg_ids: Sequence[int]) -> list[BggGame]:
        """The games BGG knows among ``bgg_ids``, in the order asked (unknown ids are left
        out, duplicates asked once). Batches of 20 ids go one after another, which is what
        BGG's rate limit wants; all of them share one ``max_wait`` budget."""
        ids: list[int] = []
        for bgg_id in bgg_ids:
            if isinstance(bgg_id, bool) or not isinstance(bgg_id, int) or bgg_id <= 0:
                raise InvalidInput(f"a BGG id is a positive integer, not {bgg_id!r}")
            if bgg_id not in ids:
                ids.append(bgg_id)
        deadline = time.monotonic() + self._max_wait
        found: dict[int, BggGame] = {}
        for start in range(0, len(ids), MAX_IDS_PER_REQUEST):
            batch = ids[start : start + MAX_IDS_PER_REQUEST]
            body = await self._get_thing(batch, deadline)
            for game in await asyncio.to_thread(parse_things, body):
                found.setdefault(game.bgg_id, game)
        return [found[i] for i in ids if i in found]

    async def _get_thing(self, ids: Sequence[int], deadline: float) -> bytes:
        """GET one batch, backing off on 202/429/503 until ``deadline``."""
        url = f"{self._base_url}/thing?id={','.join(str(i) for i in ids)}&stats=1"
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        attempt = 0
        while True:
            status, body, retry_after = await self._get(url, headers)
            if status == 200:
                return body
            if status in (401, 403):
                problem = "is not set" if not self._token else "was rejected"
                raise UpstreamError(
                    f"BoardGameGeek refused the request ({status}): BGG_API_TOKEN {problem}; "
                    "BGG requires a registered application token",
                    error_code="BGG_UNAUTHORIZED",
                    context={"status": status},
                )
            if status not in _RETRY_STATUSES:
                raise UpstreamError(
                    f"BoardGameGeek answered {status}",
                    error_code="BGG_ERROR",
                    context={"status": status},
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamError(
                    f"BoardGameGeek is still busy ({status}) after {self._max_wait:g}s",
                    error_code="BGG_UNAVAILABLE",
                    context={"status": status},
                )
            delay = retry_after if retry_after is not None else self._backoff * 2**attempt
            delay = min(delay, self._max_backoff, remaining)
            attempt += 1
            log.info("BGG answered %s; retry %d in %.2fs", status, attempt, delay)
            await asyncio.sleep(delay)

    async def _get(self, url: str, headers: dict[str, str]) -> tuple[int, bytes, float | None]:
        """One request: status, body (capped at ``max_bytes``) and Retry-After."""
        try:
            async with (
                asyncio.timeout(self._request_timeout),
                self._http.stream("GET", url, headers=headers) as response,
            ):
                if response.status_code != 200:
                    return response.status_code, b"", _retry_after(response)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise _bad(f"body larger than {self._max_bytes} bytes")
                    chunks.append(chunk)
                return 200, b"".join(chunks), None
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise UpstreamError(
                f"BoardGameGeek timed out ({type(exc).__name__})", error_code="BGG_UNAVAILABLE"
            ) from exc
        except httpx.DecodingError as exc:  # a body its Content-Encoding does not decode
            raise _bad(f"undecodable body ({exc})") from exc
        except httpx.TransportError as exc:
            raise UpstreamError(
                f"BoardGameGeek is unreachable ({type(exc).__name__})", error_code="BGG_UNAVAILABLE"
            ) from exc
