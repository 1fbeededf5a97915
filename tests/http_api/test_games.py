"""Game visibility (CONTRACT §3): non-staff see active games only, whatever they ask.

Runs on the embedded SQLite and on Postgres with Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.server import RunningServer, make_settings, running_server

from .support import GAME_FIELDS, backend_settings, client, create_game, expect_error, walk_games


@dataclass(frozen=True)
class Catalogue:
    server: RunningServer
    active: list[dict[str, Any]]
    hidden: dict[str, Any]
    beta: dict[str, Any]

    @property
    def unseen_ids(self) -> set[str]:
        return {self.hidden["id"], self.beta["id"]}


@pytest.fixture(params=["sqlite", "postgres"])
def catalogue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Catalogue]:
    """The demo games plus five active, one hidden and one beta game, made over REST."""
    settings = backend_settings(request, tmp_path, request.param)
    with running_server(settings) as server, client(server, "dev-1", "developer") as staff:
        made = [create_game(staff, name=f"Active Game {i}", section="family") for i in range(5)]
        hidden = create_game(staff, name="Hidden Gem", status="hidden")
        beta = create_game(staff, name="Beta Quest", status="beta", section="family")
        demo = [g for g in walk_games(staff) if g["name"] in {"Catan", "Tic-Tac-Toe"}]
        assert len(demo) == 2
        yield Catalogue(server, made + demo, hidden, beta)


def test_basic_user_never_sees_hidden_or_beta_games_in_the_list(catalogue: Catalogue) -> None:
    """Walking every page, with any status filter and page size, a basic user sees active
    games only, and every one of them."""
    active = {g["id"] for g in catalogue.active}
    with client(catalogue.server) as http:
        for status in (None, "active", "beta", "hidden"):
            for limit in (1, 3, 100):
                params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
                seen = walk_games(http, **params)
                ids = [g["id"] for g in seen]
                assert all(g["status"] == "active" for g in seen), params
                assert not set(ids) & catalogue.unseen_ids, params
                assert len(ids) == len(set(ids)), f"a page repeated a game: {params}"
                assert set(ids) == (active if status in (None, "active") else set()), params


def test_basic_user_search_finds_no_hidden_or_beta_game(catalogue: Catalogue) -> None:
    """Searching, even for the exact name and with a status, never surfaces a hidden or beta
    game."""
    with client(catalogue.server) as http:
        for search in ("Hidden Gem", "Beta Quest", "Gem", "hidden", "e", "%", "_"):
            for status in (None, "hidden", "beta"):
                params = {"search": search, "limit": 2, **({"status": status} if status else {})}
                seen = walk_games(http, **params)
                assert not {g["id"] for g in seen} & catalogue.unseen_ids, params
                assert all(g["status"] == "active" for g in seen), params
        assert {g["name"] for g in walk_games(http, search="Active Game")} == {
            f"Active Game {i}" for i in range(5)
        }


def test_basic_user_gets_404_for_a_hidden_or_beta_game(catalogue: Catalogue) -> None:
    """GET /games/{id} of a hidden or beta game is the same 404 as a game that never existed."""
    with client(catalogue.server) as http:
        unknown = expect_error(http.get("/games/no-such-game"), 404, "GAME_NOT_FOUND")
        for game in (catalogue.hidden, catalogue.beta):
            body = expect_error(http.get(f"/games/{game['id']}"), 404, "GAME_NOT_FOUND")
            assert body == unknown, "a hidden game must not be told apart from a missing one"
        active = http.get(f"/games/{catalogue.active[0]['id']}")
        assert active.status_code == 200
        assert set(active.json()) == GAME_FIELDS


@pytest.mark.parametrize("role", ["developer", "admin"])
def test_staff_see_every_game(catalogue: Catalogue, role: str) -> None:
    """Staff see hidden and beta games in the list, by status, by search and by id."""
    with client(catalogue.server, f"{role}-2", role) as http:
        every = walk_games(http, limit=2)
        ids = [g["id"] for g in every]
        assert len(ids) == len(set(ids)), "pagination repeated a game"
        assert {g["id"] for g in catalogue.active} | catalogue.unseen_ids == set(ids)
        assert [g["name"] for g in every] == sorted(g["name"] for g in every)
        assert [g["id"] for g in walk_games(http, status="hidden")] == [catalogue.hidden["id"]]
        assert [g["id"] for g in walk_games(http, status="beta")] == [catalogue.beta["id"]]
        assert [g["id"] for g in walk_games(http, search="gem")] == [catalogue.hidden["id"]]
        for game in (catalogue.hidden, catalogue.beta):
            response = http.get(f"/games/{game['id']}")
            assert response.status_code == 200
            assert response.json() == game


def test_hiding_a_game_hides_it_at_once(catalogue: Catalogue) -> None:
    """A game an admin PATCHes to hidden disappears for users on the next request."""
    game = catalogue.active[0]
    with client(catalogue.server) as http, client(catalogue.server, "adm", "admin") as staff:
        assert http.get(f"/games/{game['id']}").status_code == 200
        patched = staff.patch(f"/admin/games/{game['id']}", json={"status": "hidden"})
        assert patched.json()["status"] == "hidden"
        expect_error(http.get(f"/games/{game['id']}"), 404, "GAME_NOT_FOUND")
        assert game["id"] not in {g["id"] for g in walk_games(http)}
        staff.patch(f"/admin/games/{game['id']}", json={"status": "active"})
        assert http.get(f"/games/{game['id']}").status_code == 200


@pytest.mark.parametrize(
    ("params", "error_code"),
    [
        ({"limit": 0}, "VALIDATION_ERROR"),
        ({"limit": 101}, "VALIDATION_ERROR"),
        ({"limit": "many"}, "VALIDATION_ERROR"),
        ({"status": "archived"}, "VALIDATION_ERROR"),
        ({"search": "x" * 101}, "VALIDATION_ERROR"),
        ({"cursor": "not-a-cursor"}, "INVALID_CURSOR"),
        ({"cursor": "WzFd"}, "INVALID_CURSOR"),
    ],
)
def test_bad_list_parameters_are_422(
    tmp_path: Path, params: dict[str, Any], error_code: str
) -> None:
    """A bad limit, status, search or cursor is a 422 with the contract's body."""
    with running_server(make_settings(tmp_path)) as server, client(server) as http:
        expect_error(http.get("/games", params=params), 422, error_code)


def test_default_page_is_20_and_at_most_100(catalogue: Catalogue) -> None:
    """Without ``limit`` a page holds at most 20 games; the cursor carries on from there."""
    with client(catalogue.server, "adm", "admin") as staff:
        for i in range(20):
            create_game(staff, name=f"Bulk {i:02d}")
        first = staff.get("/games").json()
        assert len(first["games"]) == 20
        assert first["next_cursor"]
        rest = staff.get("/games", params={"cursor": first["next_cursor"]}).json()
        total = len(first["games"]) + len(rest["games"])
        assert total == len(catalogue.active) + 2 + 20
        assert len(staff.get("/games", params={"limit": 100}).json()["games"]) == total
