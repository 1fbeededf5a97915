"""The BoardGameGeek client against a fake BGG on loopback (tests/bgg_server.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from chat_server.bgg import BggClient, BggGame, parse_things
from chat_server.errors import InvalidInput, NotFound, UpstreamError
from tests.bgg_server import FakeBgg, Reply, item_xml, items_xml

TOKEN = "app-token-123"


@pytest.fixture
def bgg() -> Iterator[FakeBgg]:
    with FakeBgg(token=TOKEN) as server:
        yield server


def make_client(
    bgg: FakeBgg,
    *,
    token: str | None = TOKEN,
    timeout: float = 2.0,
    max_wait: float = 3.0,
    backoff: float = 0.01,
    max_bytes: int = 1024 * 1024,
) -> BggClient:
    """A client for the fake BGG with test-sized waits."""
    return BggClient(
        base_url=bgg.base_url,
        token=token,
        timeout=timeout,
        max_wait=max_wait,
        backoff=backoff,
        max_bytes=max_bytes,
    )


@pytest.fixture
async def client(bgg: FakeBgg) -> AsyncIterator[BggClient]:
    async with make_client(bgg) as bgg_client:
        yield bgg_client


async def test_thing_with_stats_parses_every_field(client: BggClient, bgg: FakeBgg) -> None:
    """Importing CATAN fills every field, with the BGG average as the rating."""
    async with asyncio.timeout(5):
        game = await client.fetch_one(13)
    assert game == BggGame(
        bgg_id=13,
        name="CATAN",
        min_players=3,
        max_players=4,
        playing_time=120,
        rating=pytest.approx(7.09817),  # type: ignore[arg-type]
        thumbnail_url="https://cf.geekdo-images.com/W3Bsga_uLP9kO91gZ7H8yw__thumb/img/catan_t.jpg",
        image_url="https://cf.geekdo-images.com/W3Bsga_uLP9kO91gZ7H8yw__original/img/catan.jpg",
        year_published=1995,
        description=(
            "In CATAN (formerly The Settlers of Catan), players try to be the dominant force "
            'on the island of Catan.\n\nTrade & build \u2014 "wood for sheep".'
        ),
    )
    (request,) = bgg.requests
    assert request.path == "/xmlapi2/thing"
    assert request.query == {"id": "13", "stats": "1"}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


async def test_unknown_values_and_fetch_order(client: BggClient) -> None:
    """BGG's zeros become unknowns, and several games come back in the order asked."""
    async with asyncio.timeout(5):
        games = await client.fetch([400000, 822, 999999, 13, 822])
    assert [g.bgg_id for g in games] == [400000, 822, 13]
    fresh = games[0]
    assert (fresh.name, fresh.min_players, fresh.max_players, fresh.playing_time) == (
        "Unreleased Prototype",
        None,
        None,
        None,
    )
    assert (fresh.rating, fresh.year_published, fresh.thumbnail_url, fresh.description) == (
        None,
        None,
        None,
        None,
    )
    assert games[1].rating == pytest.approx(7.41)


def test_primary_name_wins_over_alternates() -> None:
    """The game is named by its primary name even when an alternate comes first."""
    body = (
        items_xml(item_xml(5, "Primary", alternate="Alt"))
        .replace(b'<name type="primary" sortindex="1" value="Primary" />\n', b"")
        .replace(b"</description>", b'</description><name type="primary" value="Primary" />')
    )
    (game,) = parse_things(body)
    assert game.name == "Primary"


async def test_queued_twice_then_ready(client: BggClient, bgg: FakeBgg) -> None:
    """BGG's 202 "accepted, come back later" answers are waited out."""
    bgg.enqueue(Reply.queued(), Reply.queued())
    async with asyncio.timeout(5):
        game = await client.fetch_one(13)
    assert game.name == "CATAN"
    assert len(bgg.requests) == 3


async def test_429_honours_retry_after(client: BggClient, bgg: FakeBgg) -> None:
    """A throttled import waits as long as BGG's Retry-After asks, then succeeds."""
    bgg.enqueue(Reply.throttled(429, retry_after="1"))
    async with asyncio.timeout(5):
        game = await client.fetch_one(822)
    assert game.name == "Carcassonne"
    first, second = bgg.requests
    # The client's own backoff is 0.01 s: only Retry-After explains a one-second gap.
    assert second.at - first.at >= 0.9


async def test_503_without_retry_after_backs_off(client: BggClient, bgg: FakeBgg) -> None:
    """A 503 from BGG is retried after an exponentially growing pause."""
    bgg.enqueue(Reply.throttled(503), Reply.throttled(503), Reply.throttled(503))
    async with asyncio.timeout(5):
        await client.fetch_one(13)
    gaps = [b.at - a.at for a, b in zip(bgg.requests, bgg.requests[1:], strict=False)]
    assert len(gaps) == 3
    assert gaps[1] >= 0.02 * 0.9 and gaps[2] >= 0.04 * 0.9


async def test_max_wait_exhausted_is_unavailable(bgg: FakeBgg) -> None:
    """When BGG stays queued past max_wait the import fails as BGG_UNAVAILABLE, on time."""
    bgg.enqueue(*[Reply.queued()] * 200)
    started = time.monotonic()
    async with make_client(bgg, max_wait=0.3, backoff=0.05) as bgg_client, asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await bgg_client.fetch_one(13)
    elapsed = time.monotonic() - started
    assert caught.value.error_code == "BGG_UNAVAILABLE"
    assert 0.3 <= elapsed < 2.0
    assert 3 <= len(bgg.requests) < 20


async def test_missing_token_names_bgg_api_token(bgg: FakeBgg) -> None:
    """Without a token BGG says 401 and the error tells the admin to set BGG_API_TOKEN."""
    async with make_client(bgg, token=None) as bgg_client, asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await bgg_client.fetch_one(13)
    assert caught.value.error_code == "BGG_UNAUTHORIZED"
    assert "BGG_API_TOKEN" in caught.value.message
    assert "not set" in caught.value.message
    assert "authorization" not in bgg.requests[0].headers
    assert len(bgg.requests) == 1


async def test_wrong_token_is_rejected(bgg: FakeBgg) -> None:
    """A token BGG does not accept is reported as rejected, not retried."""
    async with make_client(bgg, token="wrong") as bgg_client, asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await bgg_client.fetch_one(13)
    assert caught.value.error_code == "BGG_UNAUTHORIZED"
    assert "BGG_API_TOKEN was rejected" in caught.value.message
    assert bgg.requests[0].headers["authorization"] == "Bearer wrong"


@pytest.mark.parametrize("status", [400, 404, 500])
async def test_other_statuses_are_bgg_error(client: BggClient, bgg: FakeBgg, status: int) -> None:
    """Any other failing status is reported at once as BGG_ERROR."""
    bgg.enqueue(Reply(status, b"oops"))
    async with asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await client.fetch_one(13)
    assert caught.value.error_code == "BGG_ERROR"
    assert len(bgg.requests) == 1


async def test_error_document_is_bgg_error(client: BggClient, bgg: FakeBgg) -> None:
    """A 200 carrying BGG's <error> document is an error with BGG's message."""
    bgg.enqueue(Reply(200, b"<error><message>Invalid id</message></error>"))
    async with asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await client.fetch_one(13)
    assert caught.value.error_code == "BGG_ERROR"
    assert "Invalid id" in caught.value.message


@pytest.mark.parametrize(
    "reply",
    [Reply.malformed(), Reply.billion_laughs(), Reply.small_entity(), Reply.external_entity()],
    ids=["malformed", "billion-laughs", "internal-entity", "external-entity"],
)
async def test_bad_xml_is_refused(client: BggClient, bgg: FakeBgg, reply: Reply) -> None:
    """Malformed XML, DTDs and entities are refused as BGG_BAD_RESPONSE, never expanded."""
    bgg.enqueue(reply)
    async with asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await client.fetch_one(13)
    assert caught.value.error_code == "BGG_BAD_RESPONSE"


async def test_oversized_body_is_refused(bgg: FakeBgg) -> None:
    """A body past the size cap is refused rather than read into memory."""
    async with make_client(bgg, max_bytes=500) as bgg_client, asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await bgg_client.fetch_one(13)
    assert caught.value.error_code == "BGG_BAD_RESPONSE"


async def test_unknown_id_is_not_found(client: BggClient) -> None:
    """Importing an id BGG does not know is a 404-style NotFound."""
    async with asyncio.timeout(5):
        with pytest.raises(NotFound):
            await client.fetch_one(999999)
        assert await client.fetch([999999]) == []


async def test_45_ids_take_3_requests() -> None:
    """A big refresh is split into requests of at most 20 ids, and nothing is lost."""
    catalogue = {i: item_xml(i, f"Game {i}", average="6.5") for i in range(1000, 1045)}
    with FakeBgg(catalogue, token=TOKEN) as server:
        async with make_client(server) as bgg_client, asyncio.timeout(5):
            games = await bgg_client.fetch(list(range(1000, 1045)))
        assert [g.bgg_id for g in games] == list(range(1000, 1045))
        assert [len(r.ids) for r in server.requests] == [20, 20, 5]
        assert sorted(i for r in server.requests for i in r.ids) == list(range(1000, 1045))


async def test_bad_ids_are_refused_before_asking(client: BggClient, bgg: FakeBgg) -> None:
    """A non-positive id is invalid input and costs no request to BGG."""
    async with asyncio.timeout(5):
        with pytest.raises(InvalidInput):
            await client.fetch([13, 0])
        assert await client.fetch([]) == []
    assert bgg.requests == []


async def test_read_timeout_is_unavailable(bgg: FakeBgg) -> None:
    """BGG answering too slowly is BGG_UNAVAILABLE, after the configured timeout."""
    bgg.enqueue(Reply(200, items_xml(), delay=2.0))
    async with make_client(bgg, timeout=0.2) as bgg_client, asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await bgg_client.fetch_one(13)
    assert caught.value.error_code == "BGG_UNAVAILABLE"
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


async def test_a_dripping_body_is_cut_off(bgg: FakeBgg) -> None:
    """A body sent a byte at a time, each within the read timeout, still ends within
    three timeouts: BGG_UNAVAILABLE, not an import that never returns."""
    bgg.enqueue(Reply(200, items_xml(), drip=0.05))
    started = time.monotonic()
    async with make_client(bgg, timeout=0.2) as bgg_client, asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await bgg_client.fetch_one(13)
    assert caught.value.error_code == "BGG_UNAVAILABLE"
    assert time.monotonic() - started < 1.5


async def test_a_body_its_encoding_does_not_decode_is_bad(client: BggClient, bgg: FakeBgg) -> None:
    """A 200 that says gzip and is not: BGG_BAD_RESPONSE (a 502), not a crash."""
    bgg.enqueue(Reply(200, b"<items>not gzip</items>", {"Content-Encoding": "gzip"}))
    async with asyncio.timeout(5):
        with pytest.raises(UpstreamError) as caught:
            await client.fetch_one(13)
    assert caught.value.error_code == "BGG_BAD_RESPONSE"


async def test_connect_refused_is_unavailable() -> None:
    """BGG unreachable is BGG_UNAVAILABLE."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with (
        BggClient(
            base_url=f"http://127.0.0.1:{port}/xmlapi2", token=TOKEN, timeout=2.0
        ) as bgg_client,
        asyncio.timeout(5),
    ):
        with pytest.raises(UpstreamError) as caught:
            await bgg_client.fetch_one(13)
    assert caught.value.error_code == "BGG_UNAVAILABLE"


async def test_passed_in_http_client_is_left_open(bgg: FakeBgg) -> None:
    """A shared httpx client passed in is used as is and not closed by aclose()."""
    async with httpx.AsyncClient(timeout=2.0) as http:
        bgg_client = BggClient(base_url=bgg.base_url + "/", token=TOKEN, http=http)
        async with asyncio.timeout(5):
            assert (await bgg_client.fetch_one(822)).name == "Carcassonne"
            await bgg_client.aclose()
            assert not http.is_closed
    assert bgg.requests[0].path == "/xmlapi2/thing"
