"""A minimal Chrome DevTools Protocol driver: a real headless Chromium for page tests.

``open_page()`` launches Chromium in its own process group with a fresh profile,
attaches to one page over the browser's DevTools WebSocket (a flat session, so one
connection carries everything) and kills the whole group on exit, whatever happened.
Every CDP call and every wait has a timeout. ``find_chromium()`` is None when no
browser is installed (the caller skips or fails, see ``tests.services.missing``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

__all__ = ["CDPError", "Page", "find_chromium", "open_page"]

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CALL_TIMEOUT = 10.0
LAUNCH_TIMEOUT = 20.0
FLAGS = (
    "--headless",
    "--no-sandbox",  # we run as root in CI; the sandbox refuses to start as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    "--window-size=1280,800",
)
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


class CDPError(Exception):
    """A DevTools call answered with an error, or the page threw."""


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
    """One page target, driven over a flat CDP session.

    Not safe for concurrent use by several tasks beyond what CDP itself allows
    (calls are matched to answers by id, so concurrent calls do work).
    """

    def __init__(self, ws: ClientConnection, session_id: str) -> None:
        self._ws = ws
        self._session_id = session_id
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.errors: list[str] = []  # uncaught exceptions, console.error, CSP violations
        self._reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        """The one reader of the DevTools socket: answers go to their callers."""
        try:
            async for raw in self._ws:
                message = json.loads(raw)
                future = self._pending.pop(message.get("id", -1), None)
                if future is not None and not future.done():
                    future.set_result(message)
                elif message.get("sessionId") == self._session_id:
                    self._on_event(message.get("method", ""), message.get("params", {}))
        except ConnectionClosed:
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CDPError("the DevTools connection closed"))

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            self.errors.append(f"console.error: {args}")
        elif method == "Log.entryAdded":
            entry = params["entry"]
            # Failed fetches (a 403 the page handles, a missing favicon) are "network".
            if entry.get("level") == "error" and entry.get("source") != "network":
                self.errors.append(f"{entry.get('source')}: {entry.get('text')}")

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float = CALL_TIMEOUT,
        session: bool = True,
    ) -> dict[str, Any]:
        """Send one CDP command; its ``result``, or CDPError."""
        call_id = next(self._ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            async with asyncio.timeout(timeout):
                await self._ws.send(json.dumps(message))
                answer = await future
        finally:
            self._pending.pop(call_id, None)
        if "error" in answer:
            raise CDPError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def evaluate(self, expression: str, *, timeout: float = CALL_TIMEOUT) -> Any:
        """The value of a JavaScript expression (promises are awaited)."""
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

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
        result = await self.call("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise CDPError(f"navigating to {url}: {result['errorText']}")
        await self.wait_for(
            f"document.readyState === 'complete' && location.href === {json.dumps(url)}",
            timeout=timeout,
        )

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the element and type the text as keyboard input would."""
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.call("Input.insertText", {"text": text})

    async def click(self, selector: str) -> None:
        """Click the middle of the (first) element with the mouse, as a user would."""
        box = await self.evaluate(
            f"""(() => {{
              const el = document.querySelector({json.dumps(selector)});
              if (!el) return null;
              el.scrollIntoView({{block: "center"}});
              const r = el.getBoundingClientRect();
              return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()"""
        )
        if box is None:
            raise CDPError(f"nothing matches {selector!r}")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    async def capture(self, selector: str) -> bytes:
        """A PNG of what the (first) element matching ``selector`` shows on screen."""
        box = await self.evaluate(
            f"""(() => {{
              const el = document.querySelector({json.dumps(selector)});
              if (!el) return null;
              el.scrollIntoView({{block: "center"}});
              const r = el.getBoundingClientRect();
              return {{x: r.left + scrollX, y: r.top + scrollY, width: r.width,
                       height: r.height}};
            }})()"""
        )
        if box is None or not box["width"] or not box["height"]:
            raise CDPError(f"nothing visible matches {selector!r}")
        result = await self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": {**box, "scale": 1}, "captureBeyondViewport": True},
        )
        return base64.b64decode(result["data"])

    async def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport (for a human to look at)."""
        result = await self.call("Page.captureScreenshot", {"format": "png"})
        await asyncio.to_thread(path.write_bytes, base64.b64decode(result["data"]))
        return path


async def _devtools_url(process: asyncio.subprocess.Process, log: Path) -> str:
    """The browser's DevTools WebSocket URL, from its stderr."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while True:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        match = LISTENING.search(text)
        if match:
            return match.group(1)
        if process.returncode is not None:
            raise CDPError(f"Chromium exited with {process.returncode}: {text[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no DevTools URL from Chromium in {LAUNCH_TIMEOUT} s: {text[-2000:]}"
            )
        await asyncio.sleep(0.05)


async def _kill(process: asyncio.subprocess.Process) -> None:
    """Give the browser a moment to exit (after ``Browser.close``), then kill it and
    every helper process left in its process group."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        await process.wait()


@contextlib.asynccontextmanager
async def open_page(executable: str) -> AsyncIterator[Page]:
    """A fresh headless Chromium with one blank page; killed on exit."""
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as tmp:
        log = Path(tmp) / "stderr.log"
        profile = Path(tmp) / "profile"
        with log.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                executable,
                *FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group, so _kill reaches helpers
            )
        try:
            url = await _devtools_url(process, log)
            async with connect(
                url, open_timeout=10, close_timeout=2, max_size=64 * 2**20, compression=None
            ) as ws:
                page = Page(ws, session_id="")
                page._reader = asyncio.create_task(page._read(), name="cdp-reader")
                try:
                    target = await page.call(
                        "Target.createTarget", {"url": "about:blank"}, session=False
                    )
                    attached = await page.call(
                        "Target.attachToTarget",
                        {"targetId": target["targetId"], "flatten": True},
                        session=False,
                    )
                    page._session_id = attached["sessionId"]
                    for domain in ("Page", "Runtime", "Log"):
                        await page.call(f"{domain}.enable")
                    yield page
                finally:
                    # A clean exit lets Chromium reap its own helpers; _kill is the fallback.
                    with contextlib.suppress(CDPError, TimeoutError, ConnectionClosed):
                        await page.call("Browser.close", session=False, timeout=5)
                    page._reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, CDPError):
                        await page._reader
        finally:
            await _kill(process)
