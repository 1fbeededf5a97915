"""The page-test driver (``tests/browser.py``) on the system Chromium, against the real
admin page: it reports what a page test must see (uncaught exceptions,
``console.error``, CSP violations) and leaves out failed requests a page may expect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.browser import CDPError, Page, open_page
from tests.server import RunningServer, make_settings, running_server


@pytest.fixture
def server(chromium: str, tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


@pytest.fixture
async def page(chromium: str, server: RunningServer) -> AsyncIterator[Page]:
    async with open_page(chromium) as opened:
        await opened.navigate(f"{server.url}/admin")
        yield opened


async def test_a_clean_page_has_no_errors_even_with_a_failed_request(page: Page) -> None:
    """The admin page loads clean; a fetch answered 404 is not a page error."""
    assert await page.evaluate("fetch('/no-such-path').then(r => r.status)") == 404
    assert await page.wait_for("document.querySelector('#token') !== null")
    assert page.errors == []


async def test_exceptions_console_errors_and_csp_violations_are_reported(page: Page) -> None:
    """An uncaught exception, console.error and an inline script the CSP refuses."""
    await page.evaluate("setTimeout(() => { throw new Error('boom'); }, 0)")
    await page.evaluate("console.error('bad thing')")
    await page.evaluate(
        "document.body.appendChild(Object.assign(document.createElement('script'), "
        "{textContent: 'window.ran = true'}))"
    )
    for _ in range(100):  # the events arrive shortly after the calls: up to 5 s
        if len(page.errors) >= 3:
            break
        await asyncio.sleep(0.05)
    text = "\n".join(page.errors)
    assert "boom" in text, text
    assert "console.error: bad thing" in text, text
    assert "Content Security Policy" in text, text
    assert await page.evaluate("window.ran === undefined")


async def test_typing_clicking_and_a_missing_element(page: Page, tmp_path: Path) -> None:
    """Typed text lands in the field; clicking nothing is an error; a screenshot is a PNG."""
    await page.type_into("#token", "abc")
    assert await page.evaluate("document.querySelector('#token').value") == "abc"
    with pytest.raises(CDPError, match="nothing matches"):
        await page.click("#no-such-button")
    shot = await page.screenshot(tmp_path / "page.png")
    assert shot.read_bytes().startswith(b"\x89PNG")
    version = await page.call("Browser.getVersion", session=False)
    assert "Chrome" in version["product"]
