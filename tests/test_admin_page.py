"""The admin page (``GET /admin``) in a real headless Chromium against a real server.

The page lists live sessions, follows the SSE feed and kills sessions; these tests
drive it as a staff member would (paste a token, watch, click Kill) while a real
WebSocket client chats. A PNG of the page is left in the test's ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser import Page, open_page
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

CLOSE_KILLED = 4000
QUESTION = "What happens when a seven is rolled and the robber moves?"


@pytest.fixture
def server(chromium: str, tmp_path: Path) -> Iterator[RunningServer]:
    # Needs ``chromium`` first: without a browser, skip before starting a server.
    # Slow local tokens, so a turn streams long enough to be seen and killed mid-way.
    with running_server(make_settings(tmp_path, local_token_delay=0.05)) as srv:
        yield srv


@pytest.fixture
async def page(chromium: str, server: RunningServer) -> AsyncIterator[Page]:
    # Set up after the server, so the browser is gone before the server stops.
    async with open_page(chromium) as opened:
        yield opened
    assert opened.errors == [], opened.errors


async def game_id(server: RunningServer, name: str) -> str:
    headers = {"Authorization": f"Bearer {server.token('staff-1', 'admin')}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=5) as http:
        response = await http.get("/games", params={"search": name})
    response.raise_for_status()
    return str(response.json()["games"][0]["id"])


async def connect_page(page: Page, server: RunningServer, token: str) -> None:
    await page.navigate(f"{server.url}/admin")
    await page.type_into("#token", token)
    await page.click("#auth button[type=submit]")


def row(session_id: str) -> str:
    return f"#sessions tr[data-session={json.dumps(session_id)}]"


async def test_admin_sees_a_live_session_streaming_and_kills_it(
    server: RunningServer, page: Page, tmp_path: Path
) -> None:
    """An admin sees a user's chat appear, stream, and end with 4000 when they click Kill."""
    async with asyncio.timeout(60):
        catan = await game_id(server, "Catan")
        await connect_page(page, server, server.token("staff-1", "admin"))
        status = await page.wait_for(
            "document.querySelector('#status').textContent.startsWith('Connected') && "
            "document.querySelector('#status').textContent"
        )
        assert "0 live session" in status
        # Connecting again (say, with a fresh token) replaces the event feed, not adds one.
        await page.click("#auth button[type=submit]")
        await asyncio.sleep(1.5)  # past the page's 1 s feed reconnect delay

        async with ws_client(server.ws_url, server.token("player-7", "basic")) as client:
            ready = await client.start(catan)
            session_id = ready["session"]["id"]

            # The session.started event re-lists: the row shows up without a reload.
            cells = await page.wait_for(
                f"(() => {{ const tr = document.querySelector({json.dumps(row(session_id))});"
                " return tr && [...tr.cells].map((td) => td.textContent); })()",
                timeout=5,
            )
            assert cells[:3] == [session_id, "player-7", "Catan"]  # the game by its name
            assert cells[6] == "idle"
            assert cells[8] == "1"  # one connection follows it

            await client.send({"type": "message", "text": QUESTION})
            await client.expect("turn.started")
            state = await page.wait_for(
                f"document.querySelector({json.dumps(row(session_id) + ' td.streaming')})"
                "?.textContent",
                timeout=5,
            )
            assert state.startswith("streaming (")
            # While it streams the page re-lists every second: the token count moves.
            counted = await page.wait_for(
                f"document.querySelector({json.dumps(row(session_id) + ' td.streaming')})"
                "?.textContent.match(/streaming \\(([1-9][0-9]*) tokens\\)/)?.[1]",
                timeout=3,
            )
            assert int(counted) > 0
            await page.screenshot(tmp_path / "admin-streaming.png")

            await page.click(row(session_id) + " button.kill")
            assert await client.closed(timeout=10) == CLOSE_KILLED

        await page.wait_for(
            f"!document.querySelector({json.dumps(row(session_id))})"
            " && document.querySelector('#status').textContent.includes('0 live session')",
            timeout=5,
        )
        log = await page.evaluate(
            "[...document.querySelectorAll('#log div')].map(d => d.textContent)"
        )
        for kind in ("session.started", "session.ended"):
            assert sum(line.endswith(f" {kind} {session_id}") for line in log) == 1, log
        # The kill cut the running answer short (it takes about 7 s to stream in full).
        assert any(line.endswith(f" turn.completed {session_id} cancelled") for line in log), log
        await page.screenshot(tmp_path / "admin-killed.png")


async def test_basic_user_token_shows_an_error_not_sessions(
    server: RunningServer, page: Page, tmp_path: Path
) -> None:
    """A basic user's token gets an error status on the page and no session list."""
    async with asyncio.timeout(60):
        catan = await game_id(server, "Catan")
        async with ws_client(server.ws_url, server.token("player-7", "basic")) as client:
            await client.start(catan)
            await connect_page(page, server, server.token("player-7", "basic"))
            status = await page.wait_for(
                "document.querySelector('#status').textContent.startsWith('Error') && "
                "document.querySelector('#status').textContent"
            )
            assert status.startswith("Error 403")
            assert await page.evaluate("document.querySelectorAll('#sessions tr').length") == 0
            await page.screenshot(tmp_path / "admin-forbidden.png")


async def test_admin_watches_a_session_stream_in_by_game_name(
    server: RunningServer, page: Page, tmp_path: Path
) -> None:
    """Watch on a row opens the watch view: the game by name, the user, provider and
    model, the question, and the answer growing as the user's client receives it, to
    its end."""
    async with asyncio.timeout(60):
        catan = await game_id(server, "Catan")
        await connect_page(page, server, server.token("staff-1", "admin"))
        await page.wait_for("document.querySelector('#status').textContent.startsWith('Conn')")
        async with ws_client(server.ws_url, server.token("player-7", "basic")) as client:
            session_id = (await client.start(catan))["session"]["id"]
            # the feed's session.started re-lists, else the page's own re-list within 5 s
            await page.wait_for(
                f"!!document.querySelector({json.dumps(row(session_id))})", timeout=8
            )
            await page.click(row(session_id) + " button.watch")
            await page.wait_for(
                "document.querySelector('#watch-status').textContent.startsWith('Watching')",
                timeout=5,
            )
            facts = await page.evaluate(
                "['session', 'user', 'game', 'provider'].map("
                "(k) => document.querySelector('#watch-' + k).textContent)"
            )
            assert facts == [session_id, "player-7", "Catan", "local"]
            assert await page.evaluate("document.querySelector('#watch-model').textContent")
            await client.send({"type": "message", "text": QUESTION})
            await client.expect("turn.started")
            first = await client.expect("turn.delta")
            await page.wait_for(
                "document.querySelector('#watch-question').textContent === "
                + json.dumps(QUESTION)
                + " && document.querySelector('#watch-answer').textContent.length > 0",
                timeout=5,
            )
            await page.screenshot(tmp_path / "admin-watch-streaming.png")
            frames = await client.until("turn.completed")
            answer = "".join(f["text"] for f in [first, *frames] if f["type"] == "turn.delta")
            shown = await page.wait_for(
                "document.querySelector('#watch-state').textContent === '(stop)' && "
                "document.querySelector('#watch-answer').textContent",
                timeout=10,
            )
            assert shown == answer
            await page.screenshot(tmp_path / "admin-watch-done.png")
