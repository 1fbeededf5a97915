"""Staff game management (CONTRACT §3): create, edit, import from BGG, add rulebooks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bgg_server import CATALOGUE, FakeBgg, Reply, item_xml, items_xml
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

from .support import GAME_FIELDS, TIMEOUT, client, create_game, expect_error

BGG_TOKEN = "bgg-application-token"


@pytest.fixture
def bgg() -> Iterator[FakeBgg]:
    with FakeBgg(token=BGG_TOKEN) as fake:
        yield fake


@pytest.fixture
def server(tmp_path: Path, bgg: FakeBgg) -> Iterator[RunningServer]:
    settings = make_settings(
        tmp_path, bgg_base_url=bgg.base_url, bgg_api_token=BGG_TOKEN, bgg_max_wait=5.0
    )
    with running_server(settings) as srv:
        yield srv


@pytest.fixture
def staff(server: RunningServer) -> Iterator[httpx.Client]:
    with client(server, "dev-1", "developer") as http:
        yield http


@pytest.fixture(scope="module")
def shared_staff(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One server for the refusal tests: a refused request changes nothing."""
    settings = make_settings(tmp_path_factory.mktemp("refusals"))
    with running_server(settings) as srv, client(srv, "dev-1", "developer") as http:
        yield http


def test_create_game_answers_201_with_a_game(staff: httpx.Client) -> None:
    """POST /admin/games creates an active game by default and answers it in Game shape."""
    response = staff.post(
        "/admin/games",
        json={
            "bgg_id": 9209,
            "name": "Ticket to Ride",
            "section": "family",
            "max_players": 5,
            "rating": 7,
        },
    )
    assert response.status_code == 201, response.text
    game = response.json()
    assert set(game) == GAME_FIELDS
    assert game["status"] == "active"
    assert (game["bgg_id"], game["name"], game["section"], game["max_players"]) == (
        9209,
        "Ticket to Ride",
        "family",
        5,
    )
    assert game["rating"] == 7.0, "an integer is a valid number"
    assert staff.get(f"/games/{game['id']}").json() == game


def test_duplicate_bgg_id_is_409(staff: httpx.Client) -> None:
    """A second game with the same bgg_id is refused with 409 GAME_EXISTS."""
    create_game(staff, bgg_id=31260, name="Agricola")
    body = expect_error(
        staff.post("/admin/games", json={"bgg_id": 31260, "name": "Agricola again"}),
        409,
        "GAME_EXISTS",
    )
    assert body["context"] == {"bgg_id": 31260}
    assert [
        g["name"] for g in staff.get("/games", params={"search": "Agricola"}).json()["games"]
    ] == ["Agricola"]


def test_games_without_bgg_id_may_share_nothing_but_none(staff: httpx.Client) -> None:
    """Two home-made games (no bgg_id) are both created."""
    first = create_game(staff, name="House Rules A")
    second = create_game(staff, name="House Rules B")
    assert first["bgg_id"] is None and second["bgg_id"] is None
    assert first["id"] != second["id"]


def test_patch_changes_name_status_and_section(staff: httpx.Client) -> None:
    """PATCH changes only the fields sent; a null section clears it."""
    game = create_game(staff, name="Old Name", section="family", min_players=2)
    gid = game["id"]
    renamed = staff.patch(f"/admin/games/{gid}", json={"name": "New Name"}).json()
    assert (renamed["name"], renamed["section"], renamed["min_players"]) == (
        "New Name",
        "family",
        2,
    )
    beta = staff.patch(f"/admin/games/{gid}", json={"status": "beta", "section": "strategy"}).json()
    assert (beta["status"], beta["section"], beta["name"]) == ("beta", "strategy", "New Name")
    cleared = staff.patch(f"/admin/games/{gid}", json={"section": None}).json()
    assert cleared["section"] is None
    assert staff.get(f"/games/{gid}").json() == cleared


def test_glossary_is_patched_and_read_back(server: RunningServer, staff: httpx.Client) -> None:
    """PATCH details.glossary stores it, GET …/glossary reads it back (staff only), a
    second PATCH without it keeps it, null removes it; the public game never shows it."""
    gid = create_game(staff, name="Hollowdeep")["id"]
    assert staff.get(f"/admin/games/{gid}/glossary").json() == {"glossary": {}}
    glossary = {"Delver": ["worker", "meeple"], "Shaft": ["mine"]}
    patched = staff.patch(f"/admin/games/{gid}", json={"details": {"glossary": glossary}})
    assert patched.status_code == 200 and "details" not in patched.json()
    assert staff.get(f"/admin/games/{gid}/glossary").json() == {"glossary": glossary}
    staff.patch(f"/admin/games/{gid}", json={"name": "Hollowdeep 2"}).raise_for_status()
    staff.patch(f"/admin/games/{gid}", json={"details": {}}).raise_for_status()
    assert staff.get(f"/admin/games/{gid}/glossary").json() == {"glossary": glossary}
    assert "details" not in staff.get(f"/games/{gid}").json()
    with client(server) as user:
        expect_error(user.get(f"/admin/games/{gid}/glossary"), 403, "FORBIDDEN")
    staff.patch(f"/admin/games/{gid}", json={"details": {"glossary": None}}).raise_for_status()
    assert staff.get(f"/admin/games/{gid}/glossary").json() == {"glossary": {}}
    expect_error(staff.get("/admin/games/nope/glossary"), 404, "GAME_NOT_FOUND")


def test_patch_unknown_game_is_404(staff: httpx.Client) -> None:
    """PATCH of a game that does not exist answers 404 GAME_NOT_FOUND."""
    expect_error(staff.patch("/admin/games/nope", json={"name": "x"}), 404, "GAME_NOT_FOUND")
    expect_error(staff.patch("/admin/games/nope", json={}), 404, "GAME_NOT_FOUND")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "colour": "red"}, "colour"),
        ({"name": 42}, "name"),
        ({"name": ""}, "name"),
        ({}, "name"),
        ({"name": "x", "bgg_id": "13"}, "bgg_id"),
        ({"name": "x", "bgg_id": 1.5}, "bgg_id"),
        ({"name": "x", "bgg_id": -1}, "bgg_id"),
        ({"name": "x", "status": "archived"}, "status"),
        ({"name": "x", "rating": 11}, "rating"),
        ({"name": "x", "max_players": -2}, "max_players"),
        ({"name": "x", "max_players": "4"}, "max_players"),
        ({"name": "x", "rating": "7.5"}, "rating"),
        ([{"name": "x"}], "body"),
        ("just a string", "body"),
    ],
)
def test_bad_create_body_is_422(shared_staff: httpx.Client, body: Any, field: str) -> None:
    """An unknown field, a wrong type or a bad status is 422 naming the field."""
    staff = shared_staff
    response = staff.post("/admin/games", json=body)
    error = expect_error(response, 422, "VALIDATION_ERROR")
    assert field in error["detail"], error
    assert error["context"]["errors"], error


def test_malformed_json_is_422(shared_staff: httpx.Client) -> None:
    """A body that is not JSON at all is 422 with the contract's body."""
    staff = shared_staff
    response = staff.post(
        "/admin/games", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    expect_error(response, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"bgg_id": 1}, "bgg_id"),
        ({"status": "archived"}, "status"),
        ({"name": ["a"]}, "name"),
        ({"min_players": "two"}, "min_players"),
        ({"min_players": "2"}, "min_players"),
        ({"section": ""}, "section"),
    ],
)
def test_bad_patch_body_is_422(
    shared_staff: httpx.Client, body: dict[str, Any], field: str
) -> None:
    """PATCH refuses unknown fields (bgg_id is not editable), bad statuses and wrong types."""
    staff = shared_staff
    game = create_game(staff, name="Target")
    error = expect_error(
        staff.patch(f"/admin/games/{game['id']}", json=body), 422, "VALIDATION_ERROR"
    )
    assert field in error["detail"], error


def test_import_creates_then_refreshes_from_bgg(staff: httpx.Client, bgg: FakeBgg) -> None:
    """Import answers 201 with BGG's data (rating = BGG average), then 200 with fresh data."""
    created = staff.post("/admin/games/import", json={"bgg_id": 822})
    assert created.status_code == 201, created.text
    game = created.json()
    assert set(game) == GAME_FIELDS
    assert (game["bgg_id"], game["name"], game["min_players"], game["max_players"]) == (
        822,
        "Carcassonne",
        2,
        5,
    )
    assert game["rating"] == pytest.approx(7.41)
    assert game["status"] == "active"
    assert game["last_synced_at"] is not None
    assert bgg.requests[-1].headers["authorization"] == f"Bearer {BGG_TOKEN}"

    bgg.catalogue[822] = item_xml(822, "Carcassonne", min_players=2, max_players=6, average="7.5")
    refreshed = staff.post("/admin/games/import", json={"bgg_id": 822})
    assert refreshed.status_code == 200, refreshed.text
    again = refreshed.json()
    assert again["id"] == game["id"]
    assert (again["rating"], again["max_players"]) == (pytest.approx(7.5), 6)
    assert again["last_synced_at"] >= game["last_synced_at"]
    assert [
        g["id"] for g in staff.get("/games", params={"search": "Carcassonne"}).json()["games"]
    ] == [game["id"]]


def test_import_refreshes_a_game_made_by_hand(staff: httpx.Client) -> None:
    """The demo Catan (bgg_id 13) is refreshed in place (200), keeping its id and section."""
    catan = staff.get("/games", params={"search": "Catan"}).json()["games"][0]
    assert catan["bgg_id"] == 13
    refreshed = staff.post("/admin/games/import", json={"bgg_id": 13})
    assert refreshed.status_code == 200, refreshed.text
    game = refreshed.json()
    assert (game["id"], game["section"], game["name"]) == (catan["id"], catan["section"], "CATAN")
    assert game["rating"] == pytest.approx(7.09817)


def test_import_waits_out_bgg_queue(staff: httpx.Client, bgg: FakeBgg) -> None:
    """BGG's 202 "queued" answers are waited out and the import still succeeds."""
    bgg.enqueue(
        Reply(202, b"<message>queued</message>", {"Retry-After": "0.1"}),
        Reply(202, b"<message>queued</message>", {"Retry-After": "0.1"}),
    )
    created = staff.post("/admin/games/import", json={"bgg_id": 400000, "status": "beta"})
    assert created.status_code == 201, created.text
    game = created.json()
    assert (game["name"], game["status"], game["rating"]) == ("Unreleased Prototype", "beta", None)
    assert len(bgg.requests) == 3


def test_import_of_an_unknown_bgg_id_is_404(staff: httpx.Client) -> None:
    """An id BGG does not know is a 404 naming it, and nothing is created."""
    body = expect_error(
        staff.post("/admin/games/import", json={"bgg_id": 999999}), 404, "NOT_FOUND"
    )
    assert body["context"] == {"bgg_id": 999999}


def test_import_with_a_rejected_bgg_token_is_a_clear_502(tmp_path: Path, bgg: FakeBgg) -> None:
    """When BGG answers 401 the import fails with 502 BGG_UNAUTHORIZED naming BGG_API_TOKEN."""
    settings = make_settings(tmp_path, bgg_base_url=bgg.base_url, bgg_api_token="wrong")
    with running_server(settings) as srv, client(srv, "dev", "developer") as staff:
        body = expect_error(
            staff.post("/admin/games/import", json={"bgg_id": 13}), 502, "BGG_UNAUTHORIZED"
        )
        assert "BGG_API_TOKEN" in body["detail"]
        expect_error(
            staff.post("/admin/games/import", json={"bgg_id": 822}), 502, "BGG_UNAUTHORIZED"
        )
        assert staff.get("/games", params={"search": "Carcassonne"}).json()["games"] == []


@pytest.mark.parametrize("body", [{"bgg_id": "13"}, {"bgg_id": 0}, {}, {"bgg_id": 13, "x": 1}])
def test_bad_import_body_is_422(staff: httpx.Client, bgg: FakeBgg, body: dict[str, Any]) -> None:
    """A bad import body is refused before BGG is asked."""
    expect_error(staff.post("/admin/games/import", json=body), 422, "VALIDATION_ERROR")
    assert bgg.requests == []


def test_add_document_answers_201_with_its_id(staff: httpx.Client) -> None:
    """POST /admin/games/{id}/documents stores a rulebook and answers its id."""
    game = create_game(staff, name="Hearts")
    response = staff.post(
        f"/admin/games/{game['id']}/documents",
        json={
            "title": "Hearts rules",
            "content": "# Rules\n\n## Passing\nPass three cards.",
            "format": "markdown",
        },
    )
    assert response.status_code == 201, response.text
    doc = response.json()
    assert doc["id"] and doc["game_id"] == game["id"]
    assert (doc["language"], doc["format"], doc["title"]) == ("en", "markdown", "Hearts rules")
    assert doc["passages"] >= 1


def test_add_document_to_unknown_game_is_404(staff: httpx.Client) -> None:
    """A rulebook for a game that does not exist is 404 GAME_NOT_FOUND."""
    response = staff.post("/admin/games/nope/documents", json={"title": "t", "content": "c"})
    expect_error(response, 404, "GAME_NOT_FOUND")


@pytest.mark.parametrize(
    "body",
    [
        {"title": "t", "content": "c", "format": "pdf"},
        {"title": "t", "content": ""},
        {"content": "c"},
        {"title": "t", "content": "c", "language": "english!"},
    ],
)
def test_bad_document_body_is_422(shared_staff: httpx.Client, body: dict[str, Any]) -> None:
    """A bad format, empty content, no title or a bad language is 422."""
    staff = shared_staff
    game = create_game(staff, name="Spades")
    response = staff.post(f"/admin/games/{game['id']}/documents", json=body)
    expect_error(response, 422, "VALIDATION_ERROR")


async def test_added_rulebook_grounds_the_answer(server: RunningServer) -> None:
    """A rulebook added over REST is what the local provider answers and cites from."""
    async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
        headers = {"Authorization": f"Bearer {server.token('dev', 'developer')}"}
        game = (await http.post("/admin/games", json={"name": "Skat"}, headers=headers)).json()
        content = (
            "# Skat\n\n## Bidding\nPlayers bid numbers in order: eighteen, twenty, twenty-two."
            "\n\n## Scoring\nThe declarer needs sixty-one card points to win."
        )
        doc = await http.post(
            f"/admin/games/{game['id']}/documents",
            json={"title": "Skat rules", "content": content, "format": "markdown"},
            headers=headers,
        )
        assert doc.status_code == 201
    async with asyncio.timeout(20), ws_client(server.ws_url, server.token("player")) as ws:
        await ws.start(game["id"])
        frames = await ws.ask("How many card points does the declarer need to win?")
    completed = frames[-1]
    assert completed["finish_reason"] == "stop"
    assert completed["citations"][0]["heading"] == "Scoring"
    text = "".join(f["text"] for f in frames if f["type"] == "turn.delta")
    assert "sixty-one card points" in text


async def test_concurrent_imports_of_one_game_make_one_game(
    server: RunningServer, bgg: FakeBgg
) -> None:
    """Staff importing the same new game at once: one 201, the others 200, one game."""
    bgg.enqueue(*[Reply(200, items_xml(CATALOGUE[822]), delay=0.3)] * 6)
    headers = {"Authorization": f"Bearer {server.token('dev', 'developer')}"}
    async with (
        asyncio.timeout(20),
        httpx.AsyncClient(base_url=server.url, headers=headers, timeout=TIMEOUT) as http,
    ):
        responses = await asyncio.gather(
            *(http.post("/admin/games/import", json={"bgg_id": 822}) for _ in range(6))
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 5 + [201], [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        listed = (await http.get("/games", params={"search": "Carcassonne"})).json()["games"]
        assert len(listed) == 1
