"""The admin page's usage view in a real headless Chromium: its charts (uPlot, served by
the product under the page's strict CSP) draw the turns, cost, first-token time and
refusals that really happened, checked on screenshots of the charts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser import Page, open_page
from tests.png import count_near, rgb_pixels
from tests.server import RunningServer, make_settings, running_server
from tests.test_admin_page import game_id
from tests.wsclient import ws_client

LOCAL = "#7e57c2"  # the local provider's colour (admin-usage.js)
OPENAI = "#10a37f"
TURN_BARS = "#1565c0"
DENIED_BARS = "#b71c1c"


@pytest.fixture
def server(chromium: str, tmp_path: Path) -> Iterator[RunningServer]:
    prices = tmp_path / "prices.json"
    prices.write_text(
        '{"models": {"rulebook-lookup": {"input": 100, "output": 400}}}', encoding="utf-8"
    )
    with running_server(make_settings(tmp_path, model_prices=prices)) as srv:
        yield srv


@pytest.fixture
async def page(chromium: str, server: RunningServer) -> AsyncIterator[Page]:
    async with open_page(chromium) as opened:
        yield opened
    assert opened.errors == [], opened.errors


async def chat_until_refused(server: RunningServer, catan: str) -> None:
    """Two answered turns, then a third refused by the daily quota of 2."""
    admin = {"Authorization": f"Bearer {server.token('staff-1', 'admin')}"}
    async with httpx.AsyncClient(base_url=server.url, headers=admin, timeout=5) as http:
        flag = {"feature_key": "chat", "scope_type": "game", "scope_id": catan}
        response = await http.put(
            "/admin/flags", json={**flag, "enabled": True, "metadata": {"daily_limit": 2}}
        )
        assert response.status_code == 200, response.text
        async with ws_client(server.ws_url, server.token("player-7", "basic")) as client:
            await client.start(catan)
            for question in ("How do I win?", "What does the robber do?"):
                assert (await client.ask(question))[-1]["finish_reason"] == "stop"
            await client.send({"type": "message", "text": "And trading?"})
            assert (await client.expect("error"))["code"] == "quota_exceeded"
        deadline = time.monotonic() + 10  # refusals are written within about a second
        while time.monotonic() < deadline:
            rows = (await http.get("/admin/usage", params={"group_by": "provider"})).json()
            if rows["rows"] and rows["rows"][0]["denied"]:
                return
            await asyncio.sleep(0.2)
    raise AssertionError("the refusal was not recorded")


async def colours(page: Page, chart: str) -> list[tuple[int, int, int]]:
    png = await page.capture(f"#usage-{chart} canvas")
    return (await asyncio.to_thread(rgb_pixels, png))[2]


async def test_usage_charts_draw_what_happened(
    server: RunningServer, page: Page, tmp_path: Path
) -> None:
    """Turns, cost, first token and refusals of today show in the charts and the table."""
    async with asyncio.timeout(90):
        catan = await game_id(server, "Catan")
        await chat_until_refused(server, catan)
        await page.navigate(f"{server.url}/admin#usage")
        await page.type_into("#token", server.token("staff-1", "admin"))
        await page.click("#auth button[type=submit]")
        await page.wait_for(
            "document.querySelector('#usage-section').dataset.loaded && "
            "document.querySelectorAll('#usage-section canvas').length === 4",
            timeout=10,
        )
        cells = await page.evaluate(
            "[...document.querySelectorAll('#usage-providers tr td')].map(td => td.textContent)"
        )
        assert cells[:2] == ["local", "2"]
        assert cells[4].startswith("$") and float(cells[4][1:]) > 0  # priced by the file
        assert cells[7] == "1"  # denied
        await page.screenshot(tmp_path / "admin-usage.png")

        volume = await colours(page, "volume")
        cost = await colours(page, "cost")
        latency = await colours(page, "latency")
        refusals = await colours(page, "refusals")
    assert count_near(volume, TURN_BARS) > 100, "today's turn bar is drawn"
    assert count_near(cost, LOCAL) > 20, "today's cost point for the local provider"
    assert count_near(cost, OPENAI) == 0, "no series for a provider that did nothing"
    assert count_near(latency, LOCAL) > 20, "first-token p50/p95 points"
    assert count_near(refusals, DENIED_BARS) > 100, "today's refusal bar is drawn"


async def test_vendored_chart_library_is_served_with_its_license(server: RunningServer) -> None:
    """uPlot, its stylesheet and its license come from the product; other paths are 404."""
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        script = await http.get("/admin/assets/vendor/uPlot.iife.min.js")
        style = await http.get("/admin/assets/vendor/uPlot.min.css")
        license_ = await http.get("/admin/assets/vendor/uPlot.LICENSE")
        outside = await http.get("/admin/assets/vendor/../../config.py")
        readme = await http.get("/admin/assets/vendor/README.md")
    assert script.status_code == 200 and "uPlot" in script.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert "MIT License" in license_.text
    assert (outside.status_code, readme.status_code) == (404, 404)
