"""Grounding end to end on the embedded default (SQLite, local provider): staff add the
rulebook and errata and keep a glossary; a player's words find the rule, its correction
comes first, and a question the rules do not answer is told so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.http_api.support import client, create_game
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

from .evaluation import EVAL, glossary


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


@pytest.fixture
def hollowdeep(server: RunningServer) -> dict[str, Any]:
    """Hollowdeep with its rulebook and errata, added through the admin API."""
    with client(server, "dev-1", "developer") as staff:
        game = create_game(staff, name="Hollowdeep")
        for name, kind in (("rulebook.md", "rulebook"), ("errata.md", "errata")):
            body = {
                "language": "en",
                "title": f"Hollowdeep {kind}",
                "content": (EVAL / name).read_text("utf-8"),
                "format": "markdown",
                "kind": kind,
            }
            added = staff.post(f"/admin/games/{game['id']}/documents", json=body)
            assert added.status_code == 201, added.text
    return game


async def ask(server: RunningServer, game_id: str, question: str) -> tuple[str, list[Any]]:
    async with ws_client(server.ws_url, server.token()) as ws:
        await ws.start(game_id)
        frames = await ws.ask(question)
    text = "".join(f["text"] for f in frames if f["type"] == "turn.delta")
    return text, frames[-1]["citations"]


async def test_glossary_edited_by_staff_finds_the_rule(
    server: RunningServer, hollowdeep: dict[str, Any]
) -> None:
    """After staff PATCH the game's glossary, 'workers' finds the rule about hiring
    Delvers, with the errata that corrects it cited first; BGG details are kept."""
    with client(server, "dev-1", "developer") as staff:
        patched = staff.patch(
            f"/admin/games/{hollowdeep['id']}", json={"details": {"glossary": glossary()}}
        )
        assert patched.status_code == 200, patched.text
        refused = staff.patch(
            f"/admin/games/{hollowdeep['id']}", json={"details": {"glossary": {"x": "y"}}}
        )
        assert refused.status_code == 422
    _, citations = await ask(server, hollowdeep["id"], "how do I get more workers?")
    headings = [c["heading"] for c in citations]
    assert headings[:2] == ["Hired Delvers", "Hiring Delvers"], headings


async def test_rules_silent_is_said(server: RunningServer, hollowdeep: dict[str, Any]) -> None:
    """A question the rules do not cover gets no passage: the answer says they are silent."""
    text, citations = await ask(server, hollowdeep["id"], "are there any expansions?")
    assert citations == []
    assert "rules are silent" in text
