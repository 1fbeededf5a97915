"""A real headless Chromium for page tests, driven through Playwright for Python.

Playwright's wheel carries its own driver; it launches the system browser
(``find_chromium()``: ``$CHROMIUM`` or the first known name on PATH, e.g.
``/usr/bin/chromium``) with ``executable_path``, so no browser is ever downloaded.
``open_page()`` gives one fresh page (a new profile, a 1280x800 viewport) and closes
the browser and the driver on exit, whatever happened. Every call and wait has a
timeout. ``find_chromium()`` is None when no browser is installed (the caller skips
or fails, see ``tests.services.missing``).

The ``Page`` API is the one the page tests were written against (it was a hand-written
DevTools client before): ``evaluate``, ``wait_for``, ``navigate``, ``type_into``,
``click``, ``capture`` (an element's PNG), ``screenshot``, ``call`` (a raw DevTools
command) and ``errors`` (uncaught exceptions, ``console.error`` and the browser's own
error log, such as CSP violations; failed network requests are left out, as a page
may handle a 403). ``Page.playwright`` is the Playwright page, for anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import CDPSession, ConsoleMessage, async_playwright
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page as PlaywrightPage

__all__ = ["CDPError", "Page", "find_chromium", "open_page"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CALL_TIMEOUT = 10.0
LAUNCH_TIMEOUT = 20.0
FLAGS = (
    "--no-sandbox",  # we run as root in CI; the sandbox refuses to start as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1280, "height": 800}
# Chromium logs a failed request ("Failed to load resource: ... 403") as an error; a
# page may well expect one, so it is not counted as a page error.
NETWORK_FAILURE = "Failed to load resource"


class CDPError(Exception):
    """A browser call failed, or the page threw."""


def find_chromium() -> str | None:
    """The browser to drive: ``$CHROMIUM`` or the first known name on PATH."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return shutil.which(explicit)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Page:
    """One browser page. Calls may run concurrently from several tasks (Playwright
    matches answers to calls), though one test normally drives it from one."""

    def __init__(self, page: PlaywrightPage, devtools: CDPSession) -> None:
        self._page = page
        self._devtools = devtools
        self.errors: list[str] = []  # uncaught exceptions, console.error, CSP violations
        page.on("pageerror", lambda exc: self.errors.append(f"exception: {exc}"))
        page.on("console", self._on_console)

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not message.text.startswith(NETWORK_FAILURE):
            self.errors.append(f"console.error: {message.text}")

    @property
    def playwright(self) -> PlaywrightPage:
        """The Playwright page itself, for what this API does not cover."""
        return self._page

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float = CALL_TIMEOUT,
        session: bool = True,
    ) -> dict[str, Any]:
        """Send one DevTools command to the page (``session=False``: to the browser);
        its result, or CDPError."""
        try:
            async with asyncio.timeout(timeout):
                if session:
                    result: dict[str, Any] = await self._devtools.send(method, params)
                    return result
                browser = self._page.context.browser
                assert browser is not None
                devtools = await browser.new_browser_cdp_session()
                try:
                    result = await devtools.send(method, params)
                    return result
                finally:
                    with contextlib.suppress(PlaywrightError):
                        await devtools.detach()
        except PlaywrightError as exc:
            raise CDPError(f"{method}: {exc.message}") from exc

    async def evaluate(self, expression: str, *, timeout: float = CALL_TIMEOUT) -> Any:
        """The value of a JavaScript expression (promises are awaited)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._page.evaluate(expression)
        except PlaywrightError as exc:
            raise CDPError(f"{expression!r} threw: {exc.message}") from exc

    async def wait_for(self, expression: str, *, timeout: float = 5.0) -> Any:
        """Poll until the expression is truthy; its value, or TimeoutError with the last."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} still {value!r} after {timeout} s")
            await asyncio.sleep(0.05)

    async def navigate(self, url: str, *, timeout: float = 10.0) -> None:
        """Load ``url`` and wait until the document has finished loading."""
        try:
            await self._page.goto(url, wait_until="load", timeout=timeout * 1000)
        except PlaywrightError as exc:
            raise CDPError(f"navigating to {url}: {exc.message}") from exc
        await self.wait_for(
            f"document.readyState === 'complete' && location.href === {json.dumps(url)}",
            timeout=timeout,
        )

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the element and type the text as keyboard input would."""
        try:
            await self._page.focus(selector, timeout=CALL_TIMEOUT * 1000)
            await self._page.keyboard.insert_text(text)
        except PlaywrightError as exc:
            raise CDPError(f"typing into {selector!r}: {exc.message}") from exc

    async def click(self, selector: str) -> None:
        """Click the middle of the (first) element with the mouse, as a user would.

        Like a user's click, it does not wait for the element to become enabled or
        uncovered: it scrolls it into view and clicks where it is now."""
        target = self._page.locator(selector).first
        try:
            if await self._page.locator(selector).count() == 0:
                raise CDPError(f"nothing matches {selector!r}")
            await target.click(force=True, timeout=CALL_TIMEOUT * 1000)
        except PlaywrightError as exc:
            raise CDPError(f"clicking {selector!r}: {exc.message}") from exc

    async def capture(self, selector: str) -> bytes:
        """A PNG of what the (first) element matching ``selector`` shows on screen."""
        target = self._page.locator(selector).first
        try:
            if await self._page.locator(selector).count() == 0:
                raise CDPError(f"nothing visible matches {selector!r}")
            box = await target.bounding_box(timeout=CALL_TIMEOUT * 1000)
            if box is None or not box["width"] or not box["height"]:
                raise CDPError(f"nothing visible matches {selector!r}")
            return await target.screenshot(type="png", timeout=CALL_TIMEOUT * 1000)
        except PlaywrightError as exc:
            raise CDPError(f"capturing {selector!r}: {exc.message}") from exc

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport (for a human to look at)."""
        data = await self._page.screenshot(type="png", timeout=CALL_TIMEOUT * 1000)
        await asyncio.to_thread(path.write_bytes, data)
        return path


@contextlib.asynccontextmanager
async def open_page(executable: str) -> AsyncIterator[Page]:
    """A fresh headless Chromium (``executable``) with one blank page; closed on exit."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=list(FLAGS),
            timeout=LAUNCH_TIMEOUT * 1000,
        )
        try:
            context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            page = await context.new_page()
            devtools = await context.new_cdp_session(page)
            yield Page(page, devtools)
        finally:
            with contextlib.suppress(PlaywrightError):
                await browser.close()
