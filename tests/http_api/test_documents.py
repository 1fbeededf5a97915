"""Documents over REST (CONTRACT §3): PDF, Markdown and text uploads, listing, replacing
and deleting, page citations a user can follow, and every unreadable file refused with
nothing stored; on SQLite and Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pdfs import bomb_pdf, encrypted, image_only_pdf, many_pages_pdf, text_pdf
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

from .support import client, create_game, expect_error

DOCUMENT_FIELDS = {
    "id",
    "game_id",
    "title",
    "language",
    "kind",
    "format",
    "media_type",
    "pages",
    "passages",
    "bytes",
    "created_at",
    "updated_at",
}
PAGES = [
    ["Setup", "Each player takes five cards and two gold coins."],
    ["Castles", "A castle scores nine points when its walls are closed."],
    ["Endgame", "The game ends when the draw pile runs out."],
]
PDF_TYPE = "application/pdf"


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[RunningServer]:
    settings = make_settings(
        tmp_path, database_url=database_url, seed_demo=True, document_max_bytes=64 * 1024
    )
    with running_server(settings) as srv:
        yield srv


@pytest.fixture
def staff(server: RunningServer) -> Iterator[httpx.Client]:
    with client(server, "dev-1", "developer") as http:
        yield http


def upload(
    staff: httpx.Client,
    game_id: str,
    data: bytes,
    *,
    filename: str = "rules.pdf",
    media_type: str = PDF_TYPE,
    method: str = "POST",
    doc_id: str | None = None,
    **fields: str,
) -> httpx.Response:
    path = f"/admin/games/{game_id}/documents" + (f"/{doc_id}" if doc_id else "")
    return staff.request(method, path, files={"file": (filename, data, media_type)}, data=fields)


async def ask(server: RunningServer, game_id: str, question: str) -> dict[str, Any]:
    """One turn with the local provider: its text and its ``turn.completed`` frame."""
    async with asyncio.timeout(30), ws_client(server.ws_url, server.token("ann")) as ws:
        await ws.start(game_id)
        frames = await ws.ask(question)
    text = "".join(f["text"] for f in frames if f["type"] == "turn.delta")
    return {"text": text, **frames[-1]}


def test_pdf_upload_answers_a_document_with_its_pages(staff: httpx.Client) -> None:
    """A PDF uploaded as multipart/form-data is a Document with its pages, type and size."""
    game = create_game(staff, name="Carcassonne")
    pdf = text_pdf(PAGES)
    response = upload(staff, game["id"], pdf, title="Carcassonne rules", kind="rulebook")
    assert response.status_code == 201, response.text
    doc = response.json()
    assert set(doc) == DOCUMENT_FIELDS
    assert (doc["title"], doc["media_type"], doc["pages"], doc["bytes"]) == (
        "Carcassonne rules",
        PDF_TYPE,
        3,
        len(pdf),
    )
    assert doc["passages"] == 3 and doc["kind"] == "rulebook"
    listed = staff.get(f"/admin/games/{game['id']}/documents").json()["documents"]
    assert [d["id"] for d in listed] == [doc["id"]]
    assert listed[0]["passages"] == 3 and listed[0]["pages"] == 3


async def test_answer_is_grounded_on_the_right_page_and_cites_it(
    server: RunningServer, staff: httpx.Client
) -> None:
    """A question matching page 2 is grounded on page 2, and its citation names and links it."""
    game = create_game(staff, name="Carcassonne")
    doc = upload(staff, game["id"], text_pdf(PAGES), title="Carcassonne rules").json()
    completed = await ask(server, game["id"], "How many points does a castle score?")
    assert "castle scores nine points" in completed["text"]
    assert "[p1] Carcassonne rules, page 2:" in completed["text"]
    first = completed["citations"][0]
    assert (first["document_id"], first["title"], first["page"]) == (
        doc["id"],
        "Carcassonne rules",
        2,
    )
    assert first["url"] == f"/games/{game['id']}/documents/{doc['id']}/file#page=2"
    assert {"passage_id", "document_id", "title", "heading", "page", "url"} <= set(first)


async def test_a_citation_url_serves_the_original_to_a_player(
    server: RunningServer, staff: httpx.Client
) -> None:
    """Following a citation's url gives a player the uploaded PDF itself, as a PDF."""
    game = create_game(staff, name="Carcassonne")
    pdf = text_pdf(PAGES)
    upload(staff, game["id"], pdf, title="Carcassonne rules")
    completed = await ask(server, game["id"], "When does the game end? draw pile")
    url = completed["citations"][0]["url"].split("#")[0]
    with client(server, "ann") as player:
        response = player.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == PDF_TYPE
    assert response.content == pdf


def test_the_original_of_a_hidden_game_is_404_for_players(
    server: RunningServer, staff: httpx.Client
) -> None:
    """A hidden game's documents are 404 to non-staff, served to staff; no token is 401."""
    game = create_game(staff, name="Secret", status="hidden")
    doc = upload(
        staff, game["id"], b"# Rules\n\nWhisper.", filename="r.md", media_type="text/markdown"
    )
    assert doc.status_code == 201, doc.text
    path = f"/games/{game['id']}/documents/{doc.json()['id']}/file"
    with client(server, "ann") as player:
        expect_error(player.get(path), 404, "GAME_NOT_FOUND")
    served = staff.get(path)
    assert served.status_code == 200 and served.text == "# Rules\n\nWhisper."
    assert served.headers["content-type"].startswith("text/markdown")
    with client(server, None) as anonymous:
        expect_error(anonymous.get(path), 401, "UNAUTHORIZED")
    expect_error(staff.get(f"/games/{game['id']}/documents/nope/file"), 404, "DOCUMENT_NOT_FOUND")


async def test_replace_then_delete_change_what_grounds_answers(
    server: RunningServer, staff: httpx.Client
) -> None:
    """PUT replaces a document's passages (and file); DELETE (204) stops them grounding."""
    game = create_game(staff, name="Carcassonne")
    doc = upload(staff, game["id"], text_pdf(PAGES), title="Rules v1").json()
    new_pages = [["Castles", "A castle now scores twelve points (second edition)."]]
    replaced = upload(
        staff, game["id"], text_pdf(new_pages), method="PUT", doc_id=doc["id"], title="Rules v2"
    )
    assert replaced.status_code == 200, replaced.text
    assert (replaced.json()["id"], replaced.json()["pages"], replaced.json()["title"]) == (
        doc["id"],
        1,
        "Rules v2",
    )
    assert replaced.json()["created_at"] == doc["created_at"]
    completed = await ask(server, game["id"], "How many points does a castle score?")
    assert "twelve points" in completed["text"] and "nine points" not in completed["text"]
    assert completed["citations"][0]["page"] == 1
    path = f"/admin/games/{game['id']}/documents"
    async with httpx.AsyncClient(base_url=server.url, headers=staff.headers) as http:
        deleted = await http.delete(f"{path}/{doc['id']}")
        assert deleted.status_code == 204 and deleted.content == b""
        assert (await http.get(path)).json() == {"documents": []}
        completed = await ask(server, game["id"], "How many points does a castle score?")
        assert "twelve" not in completed["text"] and completed["citations"] == []
        expect_error(await http.delete(f"{path}/{doc['id']}"), 404, "DOCUMENT_NOT_FOUND")


def test_json_and_text_uploads_still_work(staff: httpx.Client) -> None:
    """A JSON body and a plain-text file are both documents; a FAQ keeps its kind."""
    game = create_game(staff, name="Hearts")
    posted = staff.post(
        f"/admin/games/{game['id']}/documents",
        json={"title": "FAQ", "content": "Q: Can I pass hearts?\n\nA: Yes.", "kind": "faq"},
    )
    assert posted.status_code == 201, posted.text
    assert (posted.json()["kind"], posted.json()["pages"]) == ("faq", None)
    text = upload(
        staff, game["id"], b"Pass three cards.", filename="notes.txt", media_type="text/plain"
    )
    assert text.status_code == 201, text.text
    assert (text.json()["title"], text.json()["format"]) == ("notes", "text")


@pytest.mark.parametrize(
    ("data", "filename", "media_type", "code"),
    [
        (image_only_pdf(), "scan.pdf", PDF_TYPE, "DOCUMENT_NO_TEXT"),
        (encrypted(text_pdf(PAGES)), "locked.pdf", PDF_TYPE, "DOCUMENT_ENCRYPTED"),
        (text_pdf(PAGES)[:400], "broken.pdf", PDF_TYPE, "DOCUMENT_CORRUPT"),
        (b"PK\x03\x04 a zip archive", "rules.pdf", PDF_TYPE, "DOCUMENT_TYPE_MISMATCH"),
        (text_pdf(PAGES), "rules.md", "text/markdown", "DOCUMENT_TYPE_MISMATCH"),
        (many_pages_pdf(3000), "many.pdf", PDF_TYPE, "DOCUMENT_TOO_COMPLEX"),
        (bomb_pdf(), "bomb.pdf", PDF_TYPE, "DOCUMENT_TOO_COMPLEX"),
    ],
    ids=[
        "scanned",
        "encrypted",
        "corrupt",
        "zip-named-pdf",
        "pdf-named-markdown",
        "3000-pages",
        "flate-bomb",
    ],
)
def test_unreadable_uploads_are_422_and_store_nothing(
    staff: httpx.Client, data: bytes, filename: str, media_type: str, code: str
) -> None:
    """A scanned, encrypted, corrupt, mislabelled or bomb PDF is 422 with its code; nothing
    stored."""
    game = create_game(staff, name="Carcassonne")
    response = upload(staff, game["id"], data, filename=filename, media_type=media_type)
    expect_error(response, 422, code)
    assert staff.get(f"/admin/games/{game['id']}/documents").json() == {"documents": []}


def test_oversize_upload_is_413_and_the_server_carries_on(staff: httpx.Client) -> None:
    """A file over DOCUMENT_MAX_BYTES is 413 DOCUMENT_TOO_LARGE; nothing stored; next works."""
    game = create_game(staff, name="Carcassonne")
    big = b"Roll the dice. " * 7000  # 105 000 bytes > 96 KiB
    response = upload(staff, game["id"], big, filename="big.txt", media_type="text/plain")
    expect_error(response, 413, "DOCUMENT_TOO_LARGE")
    assert staff.get(f"/admin/games/{game['id']}/documents").json() == {"documents": []}
    # Past HTTP_MAX_BODY_BYTES (4 MiB): refused from its Content-Length, before reading.
    huge = upload(staff, game["id"], big * 60, filename="big.txt", media_type="text/plain")
    expect_error(huge, 413, "PAYLOAD_TOO_LARGE")
    assert upload(staff, game["id"], text_pdf(PAGES)).status_code == 201


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"files": {"other": ("a.txt", b"x", "text/plain")}}, "VALIDATION_ERROR"),
        (
            {"files": {"file": ("a.txt", b"x", "text/plain")}, "data": {"kind": "poem"}},
            "VALIDATION_ERROR",
        ),
        ({"content": b"x", "headers": {"content-type": "image/png"}}, "UNSUPPORTED_MEDIA_TYPE"),
        (
            {"content": b"--b\r\nbroken", "headers": {"content-type": "multipart/form-data"}},
            "VALIDATION_ERROR",
        ),
    ],
    ids=["no-file", "bad-kind", "other-media-type", "no-boundary"],
)
def test_bad_forms_are_422(staff: httpx.Client, kwargs: dict[str, Any], code: str) -> None:
    """A form without a file, with a bad field, or a body of another type is 422."""
    game = create_game(staff, name="Carcassonne")
    expect_error(staff.post(f"/admin/games/{game['id']}/documents", **kwargs), 422, code)


def test_documents_are_staff_only(server: RunningServer, staff: httpx.Client) -> None:
    """Players cannot list, add, replace or delete documents (403)."""
    game = create_game(staff, name="Carcassonne")
    path = f"/admin/games/{game['id']}/documents"
    with client(server, "ann") as player:
        expect_error(player.get(path), 403, "FORBIDDEN")
        expect_error(
            player.post(path, files={"file": ("r.pdf", text_pdf(PAGES), PDF_TYPE)}),
            403,
            "FORBIDDEN",
        )
        expect_error(player.delete(f"{path}/x"), 403, "FORBIDDEN")


def test_a_hostile_file_name_becomes_a_clean_title(staff: httpx.Client) -> None:
    """Without a title, the file's name (path, control characters and NUL removed) is used."""
    game = create_game(staff, name="Carcassonne")
    body = (
        b"--b0undary\r\n"
        b'Content-Disposition: form-data; name="file"; '
        b'filename="C:\\uploads\\Big\x00 Box\x1f rules.md"\r\n'
        b"Content-Type: text/markdown\r\n\r\n"
        b"# Rules\n\nScore castles.\r\n"
        b"--b0undary--\r\n"
    )
    response = staff.post(
        f"/admin/games/{game['id']}/documents",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "Big Box rules"


def test_deeply_nested_json_is_422(staff: httpx.Client) -> None:
    """A JSON body nested far too deep is 422, never a 500."""
    game = create_game(staff, name="Carcassonne")
    body = "[" * 100_000 + "]" * 100_000
    response = staff.post(
        f"/admin/games/{game['id']}/documents",
        content=body,
        headers={"content-type": "application/json"},
    )
    expect_error(response, 422, "VALIDATION_ERROR")


async def test_the_server_answers_while_a_long_pdf_is_read(
    server: RunningServer, staff: httpx.Client
) -> None:
    """While a 100-page PDF is read (about a second of CPU, in a thread), other requests
    are answered at once; the document is then stored with its 100 pages."""
    game = create_game(staff, name="Carcassonne")
    lines = [
        [f"Line {i} of page {p} about castles and roads" for i in range(40)] for p in range(100)
    ]
    files = {"file": ("long.pdf", text_pdf(lines, compress=True), PDF_TYPE)}
    async with httpx.AsyncClient(base_url=server.url, headers=staff.headers, timeout=30) as http:
        posting = asyncio.create_task(
            http.post(f"/admin/games/{game['id']}/documents", files=files)
        )
        slowest, answered = 0.0, 0
        while not posting.done():
            started = asyncio.get_running_loop().time()
            assert (await http.get("/healthz")).status_code == 200
            slowest = max(slowest, asyncio.get_running_loop().time() - started)
            answered += 1
            await asyncio.sleep(0.01)
        response = await posting
    assert response.status_code == 201, response.text
    assert response.json()["pages"] == 100
    assert answered >= 5 and slowest < 0.5, (answered, slowest)
