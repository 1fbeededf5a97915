"""The flags API (CONTRACT §3, §4): upsert, list, delete, validation, environments.

CRUD runs on the embedded SQLite and on Postgres with Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

from .support import TIMEOUT, backend_settings, bearer, client, expect_error

FLAG_FIELDS = {
    "id",
    "feature_key",
    "scope_type",
    "scope_id",
    "role",
    "environment",
    "enabled",
    "metadata",
}


@pytest.fixture(params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(backend_settings(request, tmp_path, request.param)) as srv:
        yield srv


@pytest.fixture
def staff(server: RunningServer) -> Iterator[httpx.Client]:
    with client(server, "adm-1", "admin") as http:
        yield http


@pytest.fixture(scope="module")
def embedded_staff(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """Validation does not depend on the database, and a refusal changes nothing: one
    embedded server serves every refusal test."""
    settings = make_settings(tmp_path_factory.mktemp("flags"))
    with running_server(settings) as srv, client(srv, "adm-1", "admin") as http:
        yield http


def put(staff: httpx.Client, **flag: Any) -> dict[str, Any]:
    response = staff.put("/admin/flags", json=flag)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == FLAG_FIELDS
    return body


def test_put_same_key_twice_updates_one_flag(staff: httpx.Client) -> None:
    """PUT with the same feature, scope, role and environment keeps the id, new values win."""
    first = put(
        staff, feature_key="chat", scope_type="game", scope_id="g-1", enabled=True,
        metadata={"daily_limit": 5},
    )  # fmt: skip
    second = put(
        staff, feature_key="chat", scope_type="game", scope_id="g-1", enabled=False,
        metadata={"daily_limit": 2},
    )  # fmt: skip
    assert second["id"] == first["id"]
    assert (second["enabled"], second["metadata"]) == (False, {"daily_limit": 2})
    listed = [f for f in staff.get("/admin/flags").json()["flags"] if f["id"] == first["id"]]
    assert listed == [second]


def test_a_different_role_or_scope_is_another_flag(staff: httpx.Client) -> None:
    """The role and the scope id are part of the key: each makes its own flag."""
    base = {"feature_key": "chat", "scope_type": "section", "enabled": True}
    a = put(staff, **base, scope_id="family")
    b = put(staff, **base, scope_id="family", role="developer")
    c = put(staff, **base, scope_id="strategy")
    assert len({a["id"], b["id"], c["id"]}) == 3
    assert (a["role"], b["role"]) == (None, "developer")


def test_get_lists_every_flag(staff: httpx.Client) -> None:
    """GET /admin/flags lists every flag, the seeded global chat flag included."""
    made = put(staff, feature_key="chat.provider.openai", scope_type="global", enabled=False)
    other_env = put(
        staff, feature_key="chat", scope_type="global", enabled=True, environment="prod"
    )
    flags = staff.get("/admin/flags").json()["flags"]
    assert all(set(f) == FLAG_FIELDS for f in flags)
    ids = {f["id"] for f in flags}
    assert {made["id"], other_env["id"]} <= ids
    seeded = [f for f in flags if f["feature_key"] == "chat" and f["scope_type"] == "global"]
    assert {f["environment"] for f in seeded} == {"dev", "prod"}


def test_delete_is_204_then_404(staff: httpx.Client) -> None:
    """DELETE answers 204 with no body; the flag is gone; deleting it again is 404."""
    flag = put(staff, feature_key="beta-ui", scope_type="user", scope_id="u-9", enabled=True)
    response = staff.delete(f"/admin/flags/{flag['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert flag["id"] not in {f["id"] for f in staff.get("/admin/flags").json()["flags"]}
    expect_error(staff.delete(f"/admin/flags/{flag['id']}"), 404, "FLAG_NOT_FOUND")


BAD_FLAGS: dict[str, dict[str, Any]] = {
    "unknown scope_type": {"scope_type": "planet", "scope_id": "earth"},
    "missing scope_id for game": {"scope_type": "game"},
    "missing scope_id for user": {"scope_type": "user"},
    "missing scope_id for section": {"scope_type": "section"},
    "scope_id on global": {"scope_type": "global", "scope_id": "x"},
    "daily_limit negative": {"metadata": {"daily_limit": -1}},
    "daily_limit string": {"metadata": {"daily_limit": "5"}},
    "daily_limit float": {"metadata": {"daily_limit": 2.5}},
    "daily_limit bool": {"metadata": {"daily_limit": True}},
    "enabled missing": {"enabled": None},
    "enabled string": {"enabled": "yes"},
    "enabled 'true'": {"enabled": "true"},
    "enabled 1": {"enabled": 1},
    "unknown field": {"colour": "red"},
    "empty feature_key": {"feature_key": ""},
    "metadata not an object": {"metadata": [1, 2]},
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flag_is_422(embedded_staff: httpx.Client, case: str) -> None:
    """A flag the contract cannot mean is refused with 422 and the contract's body."""
    staff = embedded_staff
    body: dict[str, Any] = {"feature_key": "chat", "scope_type": "global", "enabled": True}
    body.update(BAD_FLAGS[case])
    body = {k: v for k, v in body.items() if v is not None}
    before = staff.get("/admin/flags").json()["flags"]
    expect_error(staff.put("/admin/flags", json=body), 422, "VALIDATION_ERROR")
    assert staff.get("/admin/flags").json()["flags"] == before


def test_environment_defaults_to_the_servers(tmp_path: Path) -> None:
    """A flag PUT without environment belongs to the server's ENVIRONMENT."""
    settings = make_settings(tmp_path, environment="staging")
    with running_server(settings) as srv, client(srv, "adm", "admin") as staff:
        flag = put(staff, feature_key="chat", scope_type="game", scope_id="g", enabled=True)
        assert flag["environment"] == "staging"
        explicit = put(
            staff, feature_key="chat", scope_type="game", scope_id="g", enabled=True,
            environment="prod",
        )  # fmt: skip
        assert explicit["environment"] == "prod" and explicit["id"] != flag["id"]


def catan_id(http: httpx.Client) -> str:
    return str(http.get("/games", params={"search": "Catan"}).json()["games"][0]["id"])


async def test_flag_change_is_in_force_for_the_next_turn(server: RunningServer) -> None:
    """Disabling chat for a game stops the next turn there; re-enabling lets it run."""
    headers = bearer(server.token("adm", "admin"))
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=TIMEOUT) as staff:
        games = (await staff.get("/games", params={"search": "Catan"})).json()["games"]
        game_id = games[0]["id"]
        flag = {"feature_key": "chat", "scope_type": "game", "scope_id": game_id}
        async with asyncio.timeout(30), ws_client(server.ws_url, server.token("p1")) as ws:
            await ws.start(game_id)
            assert (await ws.ask("How does the robber work?"))[-1]["finish_reason"] == "stop"
            response = await staff.put("/admin/flags", json={**flag, "enabled": False})
            assert response.status_code == 200
            await ws.send({"type": "message", "text": "And trading?"})
            error = await ws.expect("error")
            assert error["code"] == "feature_disabled"
            response = await staff.put("/admin/flags", json={**flag, "enabled": True})
            assert (await ws.ask("And trading?"))[-1]["finish_reason"] == "stop"


def test_flag_of_another_environment_does_not_apply(server: RunningServer) -> None:
    """A limit set for ``prod`` does not change a ``dev`` server's quota."""
    with client(server, "adm", "admin") as staff, client(server) as user:
        game_id = catan_id(user)
        put(
            staff, feature_key="chat", scope_type="game", scope_id=game_id, enabled=True,
            environment="prod", metadata={"daily_limit": 1},
        )  # fmt: skip
        quota = user.get("/me/usage", params={"game_id": game_id}).json()["quotas"][0]
        assert quota["daily_limit"] != 1
        put(
            staff, feature_key="chat", scope_type="game", scope_id=game_id, enabled=True,
            metadata={"daily_limit": 1},
        )  # fmt: skip
        quota = user.get("/me/usage", params={"game_id": game_id}).json()["quotas"][0]
        assert quota["daily_limit"] == 1


def test_basic_user_cannot_change_flags(server: RunningServer) -> None:
    """PUT and DELETE by a basic user are 403 and change nothing."""
    with client(server) as user, client(server, "adm", "admin") as staff:
        before = staff.get("/admin/flags").json()
        flag = {"feature_key": "chat", "scope_type": "global", "enabled": False}
        expect_error(user.put("/admin/flags", json=flag), 403, "FORBIDDEN")
        expect_error(user.delete(f"/admin/flags/{before['flags'][0]['id']}"), 403, "FORBIDDEN")
        assert staff.get("/admin/flags").json() == before


def quota_limit(server: RunningServer, game_id: str, user: str, role: str) -> int | None:
    with client(server, user, role) as http:
        response = http.get("/me/usage", params={"game_id": game_id})
    assert response.status_code == 200, response.text
    limit: int | None = response.json()["quotas"][0]["daily_limit"]
    return limit


def test_most_specific_flag_sets_the_limit(server: RunningServer) -> None:
    """User beats game beats section beats global; a role flag beats an every-role one."""
    with client(server, "adm", "admin") as staff:
        catan = staff.get("/games", params={"search": "Catan"}).json()["games"][0]
        game_id, section = catan["id"], catan["section"]
        assert section, "the demo Catan belongs to a section"

        def limit_for(user: str = "u-1", role: str = "basic") -> int | None:
            return quota_limit(server, game_id, user, role)

        def flag(scope_type: str, scope_id: str | None, limit: int, **extra: Any) -> None:
            put(
                staff, feature_key="chat", scope_type=scope_type, enabled=True,
                metadata={"daily_limit": limit}, **({"scope_id": scope_id} if scope_id else {}),
                **extra,
            )  # fmt: skip

        flag("global", None, 40)
        assert limit_for() == 40
        flag("section", section, 30)
        assert limit_for() == 30
        flag("game", game_id, 20)
        assert limit_for() == 20
        flag("game", game_id, 15, role="developer")
        assert (limit_for(), limit_for("d-1", "developer")) == (20, 15)
        flag("user", "u-1", 10)
        assert (limit_for("u-1"), limit_for("u-2")) == (10, 20)
        assert limit_for("a-1", "admin") is None, "admins have no quota"


async def test_no_matching_flag_means_chat_is_off(server: RunningServer) -> None:
    """With the only chat flag deleted, the quota shows nothing and a turn is refused."""
    with client(server, "adm", "admin") as staff:
        game_id = catan_id(staff)
        for flag in staff.get("/admin/flags").json()["flags"]:
            if flag["feature_key"] == "chat":
                assert staff.delete(f"/admin/flags/{flag['id']}").status_code == 204
    assert quota_limit(server, game_id, "u-1", "basic") is None
    async with asyncio.timeout(20), ws_client(server.ws_url, server.token("u-1")) as ws:
        await ws.start(game_id)
        await ws.send({"type": "message", "text": "hello"})
        assert (await ws.expect("error"))["code"] == "feature_disabled"
