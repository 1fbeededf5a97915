"""The admin page's documents view in a real headless Chromium against a real server:
a staff member picks a game, uploads a PDF, sees its pages and passages, sees a scanned
PDF refused with its code, and deletes the document; and edits the game's glossary."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.browser import Page, open_page
from tests.pdfs import image_only_pdf, text_pdf
from tests.server import RunningServer, make_settings, running_server

PAGES = [["Setup", "Shuffle the tiles."], ["Roads", "A road scores one point per tile."]]


@pytest.fixture
def server(chromium: str, tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


@pytest.fixture
async def page(chromium: str, server: RunningServer) -> AsyncIterator[Page]:
    async with open_page(chromium) as opened:
        yield opened
    assert opened.errors == [], opened.errors


def staff_headers(server: RunningServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token('staff-1', 'admin')}"}


async def choose_file(page: Page, data: bytes, name: str) -> None:
    """Put a file in the upload form's file input, as a user picking it would."""
    encoded = base64.b64encode(data).decode()
    await page.evaluate(
        "(() => { const bytes = Uint8Array.from(atob(" + json.dumps(encoded) + "),"
        " (c) => c.charCodeAt(0));"
        " const list = new DataTransfer();"
        " list.items.add(new File([bytes], " + json.dumps(name) + ", {type: 'application/pdf'}));"
        " document.querySelector('#doc-file').files = list.files; return true; })()"
    )


async def test_staff_upload_a_pdf_see_it_refuse_a_scan_and_delete(
    server: RunningServer, page: Page, tmp_path: Path
) -> None:
    """Upload shows the PDF's pages and passages; a scan is refused; Delete removes it."""
    async with asyncio.timeout(60):
        async with httpx.AsyncClient(
            base_url=server.url, headers=staff_headers(server), timeout=5
        ) as http:
            game = (
                await http.post("/admin/games", json={"name": "Carcassonne", "status": "hidden"})
            ).json()
        await page.navigate(f"{server.url}/admin#documents")
        await page.type_into("#token", server.token("staff-1", "admin"))
        await page.click("#auth button[type=submit]")
        # Hidden games are listed for staff, marked as such.
        label = await page.wait_for(
            f"document.querySelector('#doc-game option[value={json.dumps(game['id'])}]')"
            "?.textContent",
            timeout=10,
        )
        assert label == "Carcassonne (hidden)"
        assert await page.evaluate("document.querySelector('section[data-view=sessions]').hidden")
        await page.evaluate(
            f"(() => {{ const s = document.querySelector('#doc-game');"
            f" s.value = {json.dumps(game['id'])};"
            " s.dispatchEvent(new Event('change')); return true; })()"
        )
        await page.wait_for("document.querySelector('#doc-status').textContent.startsWith('0 ')")

        await choose_file(page, text_pdf(PAGES), "carcassonne.pdf")
        await page.type_into("#doc-title", "Carcassonne rules")
        await page.click("#doc-upload button[type=submit]")
        cells = await page.wait_for(
            "(() => { const tr = document.querySelector('#documents tr');"
            " return tr && [...tr.cells].map((td) => td.textContent); })()",
            timeout=10,
        )
        assert cells[:7] == [
            "Carcassonne rules",
            "rulebook",
            "en",
            "application/pdf",
            "2",
            "2",
            str(len(text_pdf(PAGES))),
        ]
        status = await page.evaluate("document.querySelector('#doc-status').textContent")
        assert status == "Uploaded Carcassonne rules: 2 passage(s) from 2 page(s)."
        await page.screenshot(tmp_path / "admin-documents.png")

        await choose_file(page, image_only_pdf(), "scan.pdf")
        await page.click("#doc-upload button[type=submit]")
        refused = await page.wait_for(
            "document.querySelector('#doc-status').textContent.startsWith('Upload failed') &&"
            " document.querySelector('#doc-status').textContent",
            timeout=10,
        )
        assert "422 DOCUMENT_NO_TEXT" in refused
        assert await page.evaluate("document.querySelectorAll('#documents tr').length") == 1

        await page.click("#documents tr button.delete")
        await page.wait_for("document.querySelectorAll('#documents tr').length === 0", timeout=10)
        async with httpx.AsyncClient(
            base_url=server.url, headers=staff_headers(server), timeout=5
        ) as http:
            listed = (await http.get(f"/admin/games/{game['id']}/documents")).json()
        assert listed == {"documents": []}


async def sign_in_and_pick(page: Page, server: RunningServer, game_id: str) -> None:
    """Open the documents view as staff and pick the game, as a user would."""
    await page.navigate(f"{server.url}/admin#documents")
    await page.type_into("#token", server.token("staff-1", "admin"))
    await page.click("#auth button[type=submit]")
    await page.wait_for(
        f"document.querySelector('#doc-game option[value={json.dumps(game_id)}]')", timeout=10
    )
    await page.evaluate(
        f"(() => {{ const s = document.querySelector('#doc-game');"
        f" s.value = {json.dumps(game_id)};"
        " s.dispatchEvent(new Event('change')); return true; })()"
    )


async def replace_glossary_text(page: Page, text: str) -> str:
    """Select the glossary's text, type ``text`` over it, save; the status shown after."""
    await page.evaluate("(() => { document.querySelector('#glossary').select(); return 1; })()")
    await page.type_into("#glossary", text or " ")  # a space over it all: a blank box
    await page.evaluate(
        "(() => { document.querySelector('#glossary-status').textContent = ''; return 1; })()"
    )
    await page.click("#glossary-form button[type=submit]")
    status: str = await page.wait_for(
        "document.querySelector('#glossary-status').textContent", timeout=10
    )
    return status


async def test_staff_see_and_edit_a_games_glossary(server: RunningServer, page: Page) -> None:
    """The glossary an admin stored shows one term a line; an added line is saved and
    read back by the API; a line without its words is refused with its number and
    nothing changes; emptying the box removes the glossary."""
    glossary = {"Delver": ["worker", "meeple"]}
    async with asyncio.timeout(60):
        async with httpx.AsyncClient(
            base_url=server.url, headers=staff_headers(server), timeout=5
        ) as http:
            game = (await http.post("/admin/games", json={"name": "Hollowdeep"})).json()
            patch = {"details": {"glossary": glossary}}
            (await http.patch(f"/admin/games/{game['id']}", json=patch)).raise_for_status()
            stored = f"/admin/games/{game['id']}/glossary"

            await sign_in_and_pick(page, server, game["id"])
            shown = await page.wait_for(
                "document.querySelector('#glossary-status').textContent === '1 term(s).'"
                " && document.querySelector('#glossary').value",
                timeout=10,
            )
            assert shown == "Delver: worker, meeple"

            saved = await replace_glossary_text(
                page, "Delver: worker, meeple\nShaft: mine,  pit\n\n"
            )
            assert saved == "Saved the glossary: 2 term(s)."
            both = {"Delver": ["worker", "meeple"], "Shaft": ["mine", "pit"]}
            assert (await http.get(stored)).json() == {"glossary": both}
            assert await page.evaluate("document.querySelector('#glossary').value") == (
                "Delver: worker, meeple\nShaft: mine, pit"
            )

            refused = await replace_glossary_text(page, "Delver: worker\nShaft mine")
            assert refused == 'Not saved: line 2: write "Term: word, word"'
            assert (await http.get(stored)).json() == {"glossary": both}

            removed = await replace_glossary_text(page, "")
            assert removed == "Removed the glossary."
            assert (await http.get(stored)).json() == {"glossary": {}}
            assert await page.evaluate("document.querySelector('#glossary').value") == ""
