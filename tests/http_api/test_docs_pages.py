"""``/docs``, ``/redoc`` and ``/`` in a real headless Chromium: the API documentation
renders with no request to any other host (offline, behind a strict proxy)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.async_api import Request

from tests.browser import Page, open_page
from tests.server import RunningServer, make_settings, running_server


@pytest.fixture
def server(chromium: str, tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


@pytest.fixture
async def page(chromium: str, server: RunningServer) -> AsyncIterator[tuple[Page, list[str]]]:
    async with open_page(chromium) as opened:
        requested: list[str] = []

        def record(request: Request) -> None:
            requested.append(request.url)

        opened.playwright.on("request", record)
        yield opened, requested
    assert opened.errors == [], opened.errors


def elsewhere(server: RunningServer, urls: list[str]) -> list[str]:
    own = urlsplit(server.url).netloc
    return [u for u in urls if not u.startswith(("data:", "blob:")) and urlsplit(u).netloc != own]


async def test_swagger_ui_renders_every_path_from_this_server(
    server: RunningServer, page: tuple[Page, list[str]]
) -> None:
    """``/docs`` shows the REST operations, having asked no other host for anything."""
    browser, requested = page
    await browser.navigate(f"{server.url}/docs")
    count = await browser.wait_for("document.querySelectorAll('.opblock').length", timeout=15)
    assert count >= 10
    assert await browser.evaluate("document.body.innerText.includes('/admin/sessions')")
    assert elsewhere(server, requested) == []


async def test_redoc_renders_from_this_server(
    server: RunningServer, page: tuple[Page, list[str]]
) -> None:
    """``/redoc`` renders the API reference with no font or script from elsewhere."""
    browser, requested = page
    await browser.navigate(f"{server.url}/redoc")
    await browser.wait_for(
        "document.body.innerText.includes('Live sessions on every instance')", timeout=15
    )
    assert elsewhere(server, requested) == []


def test_the_root_address_redirects_to_the_docs(server: RunningServer) -> None:
    """``GET /`` answers a redirect to ``/docs`` (not a 404)."""
    response = httpx.get(server.url + "/", timeout=10)
    assert response.status_code == 307
    assert response.headers["location"] == "/docs"


def test_an_unknown_docs_asset_is_a_404_in_the_usual_shape(server: RunningServer) -> None:
    """A name outside the served assets is the flat 404 body, not a file from disk."""
    response = httpx.get(server.url + "/docs/assets/core.py", timeout=10)
    assert response.status_code == 404
    assert response.json()["error_code"] == "ASSET_NOT_FOUND"
