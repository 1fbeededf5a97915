"""Helpers for the REST tests: clients with timeouts, the contract's error body, games.

Every test here talks to a real server (``tests.server.running_server``) over loopback
HTTP; these helpers only shorten what each test would otherwise spell out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat_server.config import Settings
from tests.server import RunningServer, make_settings

__all__ = [
    "GAME_FIELDS",
    "TIMEOUT",
    "backend_settings",
    "bearer",
    "client",
    "create_game",
    "expect_error",
    "walk_games",
]

TIMEOUT = 10.0
GAME_FIELDS = {
    "id",
    "bgg_id",
    "name",
    "status",
    "section",
    "min_players",
    "max_players",
    "playing_time",
    "rating",
    "thumbnail_url",
    "image_url",
    "last_synced_at",
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def client(
    server: RunningServer, user: str | None = "user-1", role: str | None = "basic"
) -> Iterator[httpx.Client]:
    """A client of ``server`` signed in as ``user`` (None: no token at all)."""
    headers = bearer(server.token(user, role)) if user is not None else {}
    with httpx.Client(base_url=server.url, headers=headers, timeout=TIMEOUT) as http:
        yield http


def expect_error(response: httpx.Response, status: int, error_code: str) -> dict[str, Any]:
    """Assert the contract's error body ``{"detail", "error_code", "context"}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"detail", "error_code", "context"}, body
    assert body["error_code"] == error_code, body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert isinstance(body["context"], dict), body
    return body


def create_game(staff: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = staff.post("/admin/games", json=fields)
    assert response.status_code == 201, response.text
    game: dict[str, Any] = response.json()
    return game


def walk_games(http: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    """Every game of ``GET /games`` with ``params``, following ``next_cursor`` to the end."""
    games: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = http.get("/games", params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"games", "next_cursor"}
        games.extend(page["games"])
        cursor = page["next_cursor"]
        if cursor is None:
            return games
        assert page["games"], "a page with a next_cursor must not be empty"
    raise AssertionError("pagination did not end")


def backend_settings(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, **overrides: Any
) -> Settings:
    """Settings for ``backend``: the embedded SQLite, or Postgres with Redis (seeded)."""
    if backend == "sqlite":
        return make_settings(tmp_path, **overrides)
    return make_settings(
        tmp_path,
        database_url=request.getfixturevalue("postgres_url"),
        redis_url=request.getfixturevalue("redis_url"),
        seed_demo=True,
        **overrides,
    )
