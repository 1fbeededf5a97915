"""A useChat app (React, ``@ai-sdk/react``) on ``WebSocketChatTransport`` from the real
``ai`` package, bundled with esbuild at test time, in headless Chromium against a real
server: the user types a question and sees the streamed answer and its sources."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.browser import open_page
from tests.node import NODE_DIR, node_script
from tests.server import make_settings, running_server
from tests.test_ai_sdk import TOKENS, game
from tests.upstreams import OpenAIUpstream, Script


async def bundle(out: Path) -> None:
    """esbuild (pinned in tests/ai_sdk/package.json) bundles the app for the browser."""
    node_script("use-chat-app.jsx")
    proc = await asyncio.create_subprocess_exec(
        str(NODE_DIR / "node_modules" / ".bin" / "esbuild"),
        "use-chat-app.jsx",
        "--bundle",
        "--format=esm",
        "--jsx=automatic",
        "--define:process.env.NODE_ENV='production'".replace("'", '"'),
        f"--outfile={out}",
        "--log-level=warning",
        cwd=NODE_DIR,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


@contextlib.contextmanager
def static_site(root: Path) -> Iterator[str]:
    """The page and its bundle over HTTP on a loopback port."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


async def test_a_use_chat_app_streams_an_answer_over_the_websocket_transport(
    chromium: str, tmp_path: Path
) -> None:
    """A user of an unmodified useChat app sees the upstream's answer and its sources."""
    site = tmp_path / "site"
    site.mkdir()
    await bundle(site / "app.js")
    with (
        OpenAIUpstream(Script(tokens=TOKENS, token_delay=0.02)) as upstream,
        running_server(
            make_settings(
                tmp_path / "server", openai_api_key="sk", openai_base_url=upstream.base_url
            )
        ) as server,
    ):
        config = {
            "url": server.url.replace("http", "ws") + "/ws/ai-sdk",
            "token": server.token(),
            "gameId": await game(server),
        }
        inline = json.dumps(config).replace("</", "<\\/")
        (site / "index.html").write_text(
            "<!doctype html><meta charset=utf-8><title>useChat</title>"
            f'<script type="application/json" id="config">{inline}'
            '</script><div id="root"></div><script type="module" src="app.js"></script>'
        )
        with static_site(site) as url:
            async with open_page(chromium) as page:
                await page.navigate(f"{url}/index.html")
                try:
                    await page.wait_for("document.querySelector('#q') !== null", timeout=10)
                except TimeoutError:
                    pytest.fail(f"the app did not render: {page.errors}")
                await page.type_into("#q", "What happens on a seven?")
                await page.click("button[type=submit]")
                shown = await page.wait_for(
                    "document.querySelector('#status').textContent === 'ready' && "
                    "document.querySelector('li.assistant .text')?.textContent",
                    timeout=20,
                )
                sources = await page.evaluate(
                    "document.querySelectorAll('li.assistant cite').length"
                )
                await page.screenshot(tmp_path / "use-chat.png")
                errors = list(page.errors)
    assert shown == "".join(TOKENS)
    assert sources >= 1
    assert errors == []
