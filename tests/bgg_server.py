"""A fake BoardGameGeek XML API2 on loopback, for testing ``chat_server.bgg`` for real.

It runs a tiny HTTP/1.1 server (keep-alive, ``Content-Length`` bodies) on its own event
loop in a thread, on port 0, and serves ``GET /xmlapi2/thing?id=..&stats=1`` in BGG's
real shape from a small catalogue. Tests script it:

- ``enqueue(*replies)``: answers given first, one per request, before the catalogue
  (202 "queued", 429 with Retry-After, malformed XML, an entity bomb, a slow answer...);
- ``token="..."``: requests without ``Authorization: Bearer <token>`` get 401;
- ``requests``: every request seen (path, query, headers, monotonic time).

Like BGG, more than 20 ids in one request is answered with an ``<error>`` (400).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import quoteattr

from tests.loop_server import LoopServer

__all__ = ["CATALOGUE", "FakeBgg", "RecordedRequest", "Reply", "item_xml", "items_xml"]

TERMS = "https://boardgamegeek.com/xmlapi/termsofuse"
_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def item_xml(
    bgg_id: int,
    name: str,
    *,
    alternate: str | None = None,
    description: str = "",
    year: int = 0,
    min_players: int = 0,
    max_players: int = 0,
    playing_time: int = 0,
    average: str = "0",
    thumbnail: str | None = None,
    image: str | None = None,
) -> str:
    """One ``<item>`` as BGG writes it; ``description`` is HTML as BGG stores it (its
    ``&#10;`` newlines come out XML-escaped, as ``&amp;#10;``)."""
    pics = ""
    if thumbnail:
        pics += f"    <thumbnail>{html.escape(thumbnail, quote=False)}</thumbnail>\n"
    if image:
        pics += f"    <image>{html.escape(image, quote=False)}</image>\n"
    alt = (
        f'    <name type="alternate" sortindex="1" value={quoteattr(alternate)} />\n'
        if alternate
        else ""
    )
    return (
        f'  <item type="boardgame" id="{bgg_id}">\n{pics}'
        f'    <name type="primary" sortindex="1" value={quoteattr(name)} />\n{alt}'
        f"    <description>{html.escape(description, quote=False)}</description>\n"
        f'    <yearpublished value="{year}" />\n'
        f'    <minplayers value="{min_players}" />\n'
        f'    <maxplayers value="{max_players}" />\n'
        f'    <playingtime value="{playing_time}" />\n'
        f'    <minplaytime value="{playing_time}" />\n'
        f'    <maxplaytime value="{playing_time}" />\n'
        '    <minage value="10" />\n'
        '    <link type="boardgamecategory" id="1021" value="Economic" />\n'
        '    <statistics page="1">\n      <ratings>\n'
        '        <usersrated value="123" />\n'
        f'        <average value="{average}" />\n'
        '        <bayesaverage value="6.9" />\n'
        '        <stddev value="1.5" />\n'
        "      </ratings>\n    </statistics>\n  </item>\n"
    )


def items_xml(*items: str) -> bytes:
    """The ``<items>`` document around some ``item_xml`` fragments (none: unknown ids)."""
    body = "".join(items)
    head = f'<?xml version="1.0" encoding="utf-8"?>\n<items termsofuse="{TERMS}">\n'
    return f"{head}{body}</items>".encode()


CATALOGUE: dict[int, str] = {
    13: item_xml(
        13,
        "CATAN",
        alternate="Catan",
        description=(
            "In CATAN (formerly The Settlers of Catan), players try to be the "
            "dominant force on the island of Catan.&#10;&#10;Trade &amp; build "
            "&mdash; &quot;wood for sheep&quot;."
        ),
        year=1995,
        min_players=3,
        max_players=4,
        playing_time=120,
        average="7.09817",
        thumbnail="https://cf.geekdo-images.com/W3Bsga_uLP9kO91gZ7H8yw__thumb/img/catan_t.jpg",
        image="https://cf.geekdo-images.com/W3Bsga_uLP9kO91gZ7H8yw__original/img/catan.jpg",
    ),
    822: item_xml(
        822,
        "Carcassonne",
        year=2000,
        min_players=2,
        max_players=5,
        playing_time=45,
        average="7.41",
        thumbnail="https://cf.geekdo-images.com/carc_t.jpg",
        image="https://cf.geekdo-images.com/carc.jpg",
    ),
    # A fresh entry: nobody rated it, no pictures, BGG's zeros for "unknown".
    400000: item_xml(400000, "Unreleased Prototype"),
}


@dataclass(frozen=True)
class Reply:
    """A scripted answer: status, body, extra headers, a delay before answering, and
    ``drip``: the body sent a byte at a time, this many seconds apart."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drip: float = 0.0

    @classmethod
    def queued(cls) -> Reply:
        """BGG's "come back later" while it prepares the answer."""
        return cls(202, b"<message>Your request has been accepted and will be processed.</message>")

    @classmethod
    def throttled(cls, status: int = 429, retry_after: str | None = None) -> Reply:
        return cls(
            status,
            b"Rate limit exceeded",
            {"Retry-After": retry_after} if retry_after is not None else {},
        )

    @classmethod
    def malformed(cls) -> Reply:
        return cls(200, items_xml(CATALOGUE[13])[:-40])

    @classmethod
    def billion_laughs(cls) -> Reply:
        """The classic entity-expansion bomb: ~3 GB if a parser expanded it."""
        entities = '<!ENTITY lol0 "lol">' + "".join(
            f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
        )
        return cls(
            200,
            (
                f'<?xml version="1.0"?>\n<!DOCTYPE items [{entities}]>\n'
                f'<items><item type="boardgame" id="13"><name type="primary" '
                f'value="&lol9;" /></item></items>'
            ).encode(),
        )

    @classmethod
    def small_entity(cls) -> Reply:
        """A harmless-looking internal entity: a plain parser would expand it into the name."""
        return cls(
            200,
            b'<?xml version="1.0"?>\n<!DOCTYPE items [<!ENTITY x "Injected">]>\n'
            b'<items><item type="boardgame" id="13"><name type="primary" '
            b'value="&x;" /></item></items>',
        )

    @classmethod
    def external_entity(cls) -> Reply:
        return cls(
            200,
            b'<?xml version="1.0"?>\n<!DOCTYPE items [<!ENTITY xxe SYSTEM '
            b'"file:///etc/passwd">]>\n<items><item type="boardgame" id="13">'
            b"<description>&xxe;</description></item></items>",
        )


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    at: float  # time.monotonic() when the request arrived

    @property
    def ids(self) -> list[int]:
        return [int(i) for i in self.query.get("id", "").split(",") if i]


class FakeBgg(LoopServer):
    """The fake server; a context manager that starts and stops it (see module docstring)."""

    def __init__(
        self, catalogue: dict[int, str] | None = None, *, token: str | None = None
    ) -> None:
        super().__init__(name="fake-bgg")
        self.catalogue = dict(CATALOGUE if catalogue is None else catalogue)
        self.token = token
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/xmlapi2"

    def enqueue(self, *replies: Reply) -> None:
        """Answer the next requests with these, in order, before serving the catalogue."""
        with self._lock:
            self._script.extend(replies)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                request = self._record(head)
                reply = self._answer(request)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                headers = {
                    "Content-Type": "text/xml; charset=utf-8",
                    "Content-Length": str(len(reply.body)),
                    **reply.headers,
                }
                lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
                for at in range(0, len(reply.body), 1 if reply.drip else len(reply.body) or 1):
                    writer.write(reply.body[at : at + 1] if reply.drip else reply.body)
                    await writer.drain()
                    await asyncio.sleep(reply.drip)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _record(self, head: bytes) -> RecordedRequest:
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        target = request_line.split(" ")[1]
        parts = urlsplit(target)
        headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        request = RecordedRequest(
            parts.path, dict(parse_qsl(parts.query)), headers, time.monotonic()
        )
        with self._lock:
            self.requests.append(request)
        return request

    def _answer(self, request: RecordedRequest) -> Reply:
        if self.token is not None and request.headers.get("authorization") != (
            f"Bearer {self.token}"
        ):
            return Reply(401, b"Unauthorized")
        with self._lock:
            if self._script:
                return self._script.popleft()
        if request.path != "/xmlapi2/thing":
            return Reply(404, b"Not Found")
        ids = request.ids
        if len(ids) > 20:
            return Reply(400, b"<error><message>Cannot load more than 20 items</message></error>")
        return Reply(200, items_xml(*(self.catalogue[i] for i in ids if i in self.catalogue)))
