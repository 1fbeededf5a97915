"""What a ``session.resume`` costs the database on an instance that has never seen the
session (issue 21's reconnect storm): one statement, counted on the real engine with
SQLAlchemy's ``before_cursor_execute``, on SQLite and Postgres. The checks it carries
(the user's own session, a game the user may see, read as stored now) still hold."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event

from tests.server import RunningServer, make_settings, running_server
from tests.test_cluster import admin, catan
from tests.wsclient import Client, ws_client


class Statements:
    """Every statement B's engine sends, as it sends it."""

    def __init__(self, server: RunningServer) -> None:
        self.sent: list[str] = []
        self._engine = server.services.db.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.sent.append(" ".join(statement.split())[:120])

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


@pytest.fixture
def pair(
    tmp_path: Path, database_url: str, redis_url: str
) -> Iterator[tuple[RunningServer, RunningServer]]:
    """Instance A and a fresh instance B on the same database and Redis."""
    settings = make_settings(
        tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        seed_demo=True,
        orphan_sweep_interval=3600.0,  # no background statement inside a count
    )
    with running_server(settings) as a, running_server(settings) as b:
        yield a, b


def counted() -> float:
    """``chat_db_statements_total`` as ``/metrics`` shows it (both instances run in this
    process: A is idle while B is counted)."""
    return REGISTRY.get_sample_value("chat_db_statements_total") or 0.0


async def resume_on(
    client: Client, statements: Statements, session_id: str
) -> tuple[dict[str, Any], list[str]]:
    """Send ``session.resume``; the answer and the statements sent meanwhile (the
    product's own counter agrees with the engine's)."""
    statements.sent.clear()
    before = counted()
    await client.send({"type": "session.resume", "session_id": session_id})
    while True:
        frame = await client.recv()
        if frame["type"] in ("session.ready", "error"):
            assert counted() - before == len(statements.sent), statements.sent
            return frame, list(statements.sent)


async def test_a_resume_on_a_fresh_instance_costs_one_statement(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """Sessions of two users (one whose role is in the token, one whose role comes from
    ``profiles``) started and asked on A resume on B with their history, one statement
    each; another user's session is ``not_found`` at the same cost."""
    a, b = pair
    game = await catan(a)
    started: dict[str, tuple[str, list[str]]] = {}
    for user, role in (("alice", "basic"), ("bob", None)):
        async with ws_client(a.ws_url, a.token(user, role=role)) as client:
            session_id = (await client.start(game))["session"]["id"]
            await client.ask(f"How does {user} win?")
        started[user] = (session_id, [f"How does {user} win?"])
    statements = Statements(b)
    try:
        for user, role in (("alice", "basic"), ("bob", None)):
            session_id, questions = started[user]
            async with ws_client(b.ws_url, b.token(user, role=role)) as client:
                ready, sent = await resume_on(client, statements, session_id)
                assert ready["type"] == "session.ready", ready
                assert ready["session"]["id"] == session_id
                history = ready["history"]
                assert [m["content"] for m in history if m["role"] == "user"] == questions
                assert [m["status"] for m in history] == ["complete", "complete"]
                assert history[1]["content"]
                assert len(sent) == 1, sent
        async with ws_client(b.ws_url, b.token("alice")) as client:
            refused, sent = await resume_on(client, statements, started["bob"][0])
        assert refused["type"] == "error" and refused["code"] == "not_found"
        assert len(sent) == 1, sent
    finally:
        statements.close()


async def test_a_resume_sees_a_game_hidden_after_the_session_started(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """A game hidden on A after a user's session started on it: the user's resume on B
    (which read the game before, through another session) is ``not_found``, still in one
    statement; staff still resume their own session on it."""
    a, b = pair
    async with httpx.AsyncClient(base_url=a.url, headers=admin(a), timeout=5) as http:
        made = await http.post("/admin/games", json={"name": "Soon Hidden", "status": "active"})
        made.raise_for_status()
        game = made.json()["id"]
        sessions = {}
        for user, role in (("carol", "basic"), ("dave", "basic"), ("erin", "admin")):
            async with ws_client(a.ws_url, a.token(user, role=role)) as client:
                sessions[user] = (await client.start(game))["session"]["id"]
        async with ws_client(b.ws_url, b.token("dave")) as client:  # B reads the game
            await client.send({"type": "session.resume", "session_id": sessions["dave"]})
            await client.expect("session.ready")
        hidden = await http.patch(f"/admin/games/{game}", json={"status": "hidden"})
        hidden.raise_for_status()
    statements = Statements(b)
    try:
        async with ws_client(b.ws_url, b.token("carol")) as client:
            refused, sent = await resume_on(client, statements, sessions["carol"])
        assert refused["type"] == "error" and refused["code"] == "not_found"
        assert len(sent) == 1, sent
        async with ws_client(b.ws_url, b.token("erin", role="admin")) as client:
            ready, sent = await resume_on(client, statements, sessions["erin"])
        assert ready["type"] == "session.ready" and ready["session"]["game_id"] == game
        assert len(sent) == 1, sent
    finally:
        statements.close()
