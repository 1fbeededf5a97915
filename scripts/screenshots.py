"""Take the README's screenshots: ``.venv/bin/python scripts/screenshots.py``.

Runs the app on a loopback port (embedded defaults, demo games, a slow ``local``
provider so an answer is seen streaming), then with the system Chromium
(``tests/browser.py``):

- ``docs/images/admin-page.png``: the admin page with a live session streaming;
- ``docs/images/terminal.png``: ``chat-server chat`` run in a real pseudo-terminal,
  its screen rendered as a page (no terminal emulator needed).
"""

from __future__ import annotations

import asyncio
import html
import os
import pty
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import find_chromium, open_page  # noqa: E402
from tests.server import RunningServer, make_settings, running_server  # noqa: E402
from tests.wsclient import ws_client  # noqa: E402

IMAGES = ROOT / "docs" / "images"
QUESTION = "What happens when a seven is rolled?"


def terminal_screen(server: RunningServer, game: str, data_dir: Path) -> str:
    """What a user sees in ``chat-server chat`` asking one question, then Ctrl-D."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "TOKEN"}
    env.update(CHAT_DATA_DIR=str(data_dir), LOG_LEVEL="warning", TOKEN=server.token("me"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "chat_server", "chat", "--game", game, "--url", server.ws_url],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=data_dir,
    )
    os.close(slave)
    screen = ""

    def read_until(text: str, timeout: float = 30) -> None:
        nonlocal screen
        deadline = time.monotonic() + timeout
        while text not in screen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not seen:\n{screen}")
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                screen += os.read(master, 4096).decode(errors="replace").replace("\r\n", "\n")

    try:
        read_until("> ")
        os.write(master, QUESTION.encode() + b"\r")
        read_until("-- ")
        read_until("\n> ")
        os.write(master, b"\x04")
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    return f"$ .venv/bin/chat-server chat --game {game}\n{screen.rstrip()}"


async def main() -> None:
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("needs Chromium on PATH")
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = make_settings(Path(tmp), local_token_delay=0.12)
        with running_server(settings) as server:
            import httpx

            headers = {"Authorization": f"Bearer {server.token('staff-1', 'admin')}"}
            async with httpx.AsyncClient(base_url=server.url, headers=headers) as http:
                games = (await http.get("/games")).json()["games"]
            catan = next(g["id"] for g in games if g["name"] == "Catan")
            tictactoe = next(g["id"] for g in games if g["name"] == "Tic-Tac-Toe")

            async with open_page(chromium) as page:
                await page.playwright.set_viewport_size({"width": 1100, "height": 560})
                await page.navigate(f"{server.url}/admin")
                await page.type_into("#token", server.token("staff-1", "admin"))
                await page.click("#auth button[type=submit]")
                await page.wait_for("document.querySelector('#status').textContent")
                async with (
                    ws_client(server.ws_url, server.token("player-7")) as one,
                    ws_client(server.ws_url, server.token("player-12")) as two,
                ):
                    await two.start(tictactoe)
                    await one.start(catan)
                    await one.send({"type": "message", "text": QUESTION})
                    await one.expect("turn.started")
                    await page.wait_for(
                        "[...document.querySelectorAll('td.streaming')]"
                        ".some(td => /streaming \\([1-9][0-9]+ tokens/.test(td.textContent))",
                        timeout=15,
                    )
                    await page.screenshot(IMAGES / "admin-page.png")

            screen = terminal_screen(server, catan, Path(tmp))
            async with open_page(chromium) as page:
                await page.playwright.set_content(
                    "<body style='margin:0;background:#1e1e1e'><pre id=t style='margin:0;"
                    "padding:14px 18px;width:860px;white-space:pre-wrap;color:#e6e6e6;"
                    "font:14px/1.4 DejaVu Sans Mono,monospace'>"
                    f"{html.escape(screen)}</pre></body>"
                )
                await page.playwright.locator("#t").screenshot(path=str(IMAGES / "terminal.png"))
    for name in ("admin-page.png", "terminal.png"):
        print(f"{IMAGES / name}: {(IMAGES / name).stat().st_size // 1024} KiB")


if __name__ == "__main__":
    asyncio.run(main())
