"""Usage over REST (CONTRACT §2 quota, §3): a user's quotas and the staff aggregates."""

from __future__ import annotations

import asyncio
import csv
import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

from .support import TIMEOUT, bearer, client, create_game, expect_error

QUOTA_FIELDS = {"feature", "daily_limit", "used", "remaining", "resets_at"}
ROW_FIELDS = {
    "key",
    "turns",
    "input_tokens",
    "output_tokens",
    "errors",
    "cancelled",
    "first_token_ms_p50",
    "first_token_ms_p95",
    "cost_usd",
    "denied",
    "unpriced",
    "estimated",
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


def demo_ids(server: RunningServer) -> dict[str, str]:
    with client(server) as http:
        return {g["name"]: g["id"] for g in http.get("/games").json()["games"]}


def next_utc_midnight() -> str:
    now = datetime.now(UTC)
    midnight = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    return midnight.strftime("%Y-%m-%dT%H:%M:%SZ")


async def converse(server: RunningServer, user: str, game_id: str, turns: int) -> None:
    """``turns`` completed chat turns by ``user`` in one new session."""
    async with asyncio.timeout(30), ws_client(server.ws_url, server.token(user)) as ws:
        await ws.start(game_id)
        for i in range(turns):
            frames = await ws.ask(f"How do I win? ({i})")
            assert frames[-1]["finish_reason"] == "stop", frames[-1]


async def my_usage(server: RunningServer, user: str, game_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=server.url, headers=bearer(server.token(user)), timeout=TIMEOUT
    ) as http:
        response = await http.get("/me/usage", params={"game_id": game_id})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_me_usage_reports_the_flag_limit_and_turns_used(server: RunningServer) -> None:
    """/me/usage shows the game flag's daily_limit, turns used today, and the UTC reset."""
    game_id = demo_ids(server)["Catan"]
    with client(server, "adm", "admin") as staff:
        flag = {"feature_key": "chat", "scope_type": "game", "scope_id": game_id}
        staff.put("/admin/flags", json={**flag, "enabled": True, "metadata": {"daily_limit": 3}})
    before = await my_usage(server, "quota-user", game_id)
    assert set(before) == {"game_id", "quotas"}
    assert before["game_id"] == game_id
    [quota] = before["quotas"]
    assert set(quota) == QUOTA_FIELDS
    assert quota == {
        "feature": "chat",
        "daily_limit": 3,
        "used": 0,
        "remaining": 3,
        "resets_at": next_utc_midnight(),
    }
    await converse(server, "quota-user", game_id, 2)
    [after] = (await my_usage(server, "quota-user", game_id))["quotas"]
    assert (after["used"], after["remaining"]) == (2, 1)
    [other] = (await my_usage(server, "someone-else", game_id))["quotas"]
    assert other["used"] == 0, "quotas are per user"


async def test_unlimited_flag_still_counts_turns(server: RunningServer) -> None:
    """With no daily_limit the quota is unlimited (nulls), and turns are counted anyway."""
    game_id = demo_ids(server)["Tic-Tac-Toe"]
    with client(server, "adm", "admin") as staff:
        flag = {"feature_key": "chat", "scope_type": "game", "scope_id": game_id}
        assert staff.put("/admin/flags", json={**flag, "enabled": True}).status_code == 200
    await converse(server, "free-user", game_id, 1)
    [quota] = (await my_usage(server, "free-user", game_id))["quotas"]
    assert (quota["daily_limit"], quota["remaining"], quota["used"]) == (None, None, 1)


def test_me_usage_of_a_hidden_game_is_404_for_basic_users(server: RunningServer) -> None:
    """A basic user asking the quota of a hidden game gets 404; staff get the quota."""
    with client(server, "dev", "developer") as staff, client(server) as user:
        hidden = create_game(staff, name="Secret", status="hidden")
        expect_error(user.get("/me/usage", params={"game_id": hidden["id"]}), 404, "GAME_NOT_FOUND")
        expect_error(user.get("/me/usage", params={"game_id": "nope"}), 404, "GAME_NOT_FOUND")
        assert staff.get("/me/usage", params={"game_id": hidden["id"]}).status_code == 200
        expect_error(user.get("/me/usage"), 422, "VALIDATION_ERROR")


async def test_admin_usage_groups_turns(server: RunningServer) -> None:
    """After a few turns, /admin/usage counts them by game, by user and by provider."""
    ids = demo_ids(server)
    await converse(server, "alice", ids["Catan"], 2)
    await converse(server, "bob", ids["Tic-Tac-Toe"], 1)
    with client(server, "dev", "developer") as staff:
        by_game = staff.get("/admin/usage", params={"group_by": "game"}).json()
        by_user = staff.get("/admin/usage", params={"group_by": "user"}).json()
        by_provider = staff.get("/admin/usage", params={"group_by": "provider"}).json()
        default = staff.get("/admin/usage").json()
    for body in (by_game, by_user, by_provider):
        assert all(set(r) == ROW_FIELDS for r in body["rows"])
        for row in body["rows"]:
            assert row["output_tokens"] > 0 and row["input_tokens"] > 0
            assert (row["errors"], row["cancelled"]) == (0, 0)
            assert row["first_token_ms_p50"] is not None and row["first_token_ms_p50"] >= 0
    assert {r["key"]: r["turns"] for r in by_game["rows"]} == {
        ids["Catan"]: 2,
        ids["Tic-Tac-Toe"]: 1,
    }
    assert {r["key"]: r["turns"] for r in by_user["rows"]} == {"alice": 2, "bob": 1}
    assert {r["key"]: r["turns"] for r in by_provider["rows"]} == {"local": 3}
    assert default["rows"] == by_game["rows"], "group_by defaults to game"


async def test_admin_usage_period(server: RunningServer) -> None:
    """A period before today's turns is empty; one around them counts them."""
    await converse(server, "carol", demo_ids(server)["Catan"], 1)
    now = datetime.now(UTC)
    with client(server, "adm", "admin") as staff:
        past = staff.get(
            "/admin/usage",
            params={
                "from": (now - timedelta(days=3)).isoformat(),
                "to": (now - timedelta(days=2)).isoformat(),
            },
        ).json()
        assert past["rows"] == []
        around = staff.get(
            "/admin/usage",
            params={
                "from": (now - timedelta(hours=1)).isoformat(),
                "to": (now + timedelta(hours=1)).isoformat(),
            },
        ).json()
        assert [r["turns"] for r in around["rows"]] == [1]
        # 'to' alone: the day before it (not "from today", which would be after it)
        only_to = staff.get("/admin/usage", params={"to": (now - timedelta(days=2)).isoformat()})
        assert only_to.status_code == 200, only_to.text
        body = only_to.json()
        assert body["rows"] == []
        assert datetime.fromisoformat(body["end"]) - datetime.fromisoformat(
            body["start"]
        ) == timedelta(days=1)


@pytest.mark.parametrize(
    ("params", "error_code"),
    [
        ({"group_by": "planet"}, "VALIDATION_ERROR"),
        ({"from": "yesterday"}, "VALIDATION_ERROR"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "INVALID_RANGE"),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "INVALID_RANGE"),
        ({"from": "0001-01-01T00:00:00+14:00"}, "INVALID_RANGE"),  # before year 1 in UTC
        ({"to": "9999-12-31T23:59:59-14:00"}, "INVALID_RANGE"),  # after year 9999 in UTC
    ],
)
def test_admin_usage_bad_parameters_are_422(
    server: RunningServer, params: dict[str, str], error_code: str
) -> None:
    """A bad group_by, date or an empty period is 422 with the contract's body."""
    with client(server, "adm", "admin") as staff:
        expect_error(staff.get("/admin/usage", params=params), 422, error_code)


def test_admin_usage_is_staff_only(server: RunningServer) -> None:
    """A basic user gets 403 on /admin/usage."""
    with client(server) as user:
        expect_error(user.get("/admin/usage"), 403, "FORBIDDEN")


async def refused(server: RunningServer, user: str, game_id: str, code: str) -> None:
    """One message by ``user`` that is refused with ``code`` (no turn starts)."""
    async with asyncio.timeout(30), ws_client(server.ws_url, server.token(user)) as ws:
        await ws.start(game_id)
        await ws.send({"type": "message", "text": "May I?"})
        assert (await ws.expect("error"))["code"] == code


def rows_when(
    staff: httpx.Client, params: dict[str, str], ready: Any, wait: float = 10.0
) -> list[dict[str, Any]]:
    """The usage rows once ``ready(rows)`` holds (refusals are written within a second)."""
    deadline = time.monotonic() + wait
    while True:
        rows: list[dict[str, Any]] = staff.get("/admin/usage", params=params).json()["rows"]
        if ready(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


async def test_admin_usage_counts_refused_turns_as_denied(server: RunningServer) -> None:
    """A quota refusal and a flag refusal are counted as denied, apart from turns."""
    ids = demo_ids(server)
    catan, tictactoe = ids["Catan"], ids["Tic-Tac-Toe"]
    with client(server, "adm", "admin") as staff:
        flag = {"feature_key": "chat", "scope_type": "game", "scope_id": catan}
        staff.put("/admin/flags", json={**flag, "enabled": True, "metadata": {"daily_limit": 1}})
        off = {"feature_key": "chat", "scope_type": "game", "scope_id": tictactoe}
        staff.put("/admin/flags", json={**off, "enabled": False})
    await converse(server, "dora", catan, 1)
    await refused(server, "dora", catan, "quota_exceeded")
    await refused(server, "dora", catan, "quota_exceeded")
    await refused(server, "erin", tictactoe, "feature_disabled")
    with client(server, "dev", "developer") as staff:
        rows = rows_when(staff, {"group_by": "game"}, lambda rs: sum(r["denied"] for r in rs) >= 3)
        by_user = {r["key"]: r for r in staff.get("/admin/usage?group_by=user").json()["rows"]}
    by_game = {r["key"]: r for r in rows}
    assert (by_game[catan]["turns"], by_game[catan]["denied"]) == (1, 2)
    assert (by_game[tictactoe]["turns"], by_game[tictactoe]["denied"]) == (0, 1)
    assert by_game[tictactoe]["first_token_ms_p50"] is None
    assert (by_user["dora"]["denied"], by_user["erin"]["denied"]) == (2, 1)


async def test_admin_usage_as_csv(server: RunningServer) -> None:
    """Accept: text/csv answers the same rows as CSV, a header line first."""
    ids = demo_ids(server)
    await converse(server, "fay", ids["Catan"], 2)
    with client(server, "dev", "developer") as staff:
        as_json = staff.get("/admin/usage", params={"group_by": "model"}).json()["rows"]
        response = staff.get(
            "/admin/usage", params={"group_by": "model"}, headers={"Accept": "text/csv"}
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    lines = list(csv.reader(io.StringIO(response.text)))
    header, body = lines[0], lines[1:]
    assert header[:10] == [
        "key",
        "turns",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "errors",
        "cancelled",
        "denied",
        "first_token_ms_p50",
        "first_token_ms_p95",
    ]
    assert set(header) == ROW_FIELDS
    assert len(body) == len(as_json) == 1
    row = dict(zip(header, body[0], strict=True))
    expected = as_json[0]
    assert row["key"] == expected["key"] == "rulebook-lookup"
    assert int(row["turns"]) == expected["turns"] == 2
    assert int(row["output_tokens"]) == expected["output_tokens"]
    assert row["cost_usd"] == ""  # the offline lookup has no price: null is an empty cell
    assert float(row["first_token_ms_p95"]) == expected["first_token_ms_p95"]


async def test_admin_usage_by_day(server: RunningServer) -> None:
    """group_by=day keys today's turns by the UTC date."""
    await converse(server, "gus", demo_ids(server)["Catan"], 1)
    with client(server, "dev", "developer") as staff:
        rows = staff.get("/admin/usage", params={"group_by": "day"}).json()["rows"]
    assert [(r["key"], r["turns"]) for r in rows] == [(datetime.now(UTC).date().isoformat(), 1)]
