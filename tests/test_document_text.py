"""Reading an uploaded document (``chat_server.document_text``): text per PDF page, and
every kind of unreadable file refused with its own error code, quickly."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from chat_server.document_text import DocumentRejected, read_document, sniff_format
from tests.pdfs import bomb_pdf, encrypted, image_only_pdf, many_pages_pdf, text_pdf

PAGES = [
    ["Setup", "Each player takes five cards."],
    ["Scoring", "A castle scores nine points."],
    ["Endgame", "The game ends when the deck runs out."],
]


async def test_pdf_text_is_read_per_page() -> None:
    """Each page's text comes back under its 1-based page number."""
    read = await read_document(text_pdf(PAGES), "pdf")
    assert (read.format, read.media_type, read.pages) == ("pdf", "application/pdf", 3)
    assert [t.page for t in read.texts] == [1, 2, 3]
    for text, lines in zip(read.texts, PAGES, strict=True):
        assert text.text.split() == " ".join(lines).split()


async def test_markdown_is_one_part_without_page() -> None:
    """Markdown is decoded as UTF-8 (a BOM dropped) and has no page."""
    read = await read_document("\ufeff# Rules\n\nRoll two dice.".encode(), "markdown")
    assert read.pages is None
    assert read.texts[0].page is None and read.texts[0].text.startswith("# Rules")


@pytest.mark.parametrize(
    ("data", "fmt", "code"),
    [
        (image_only_pdf(), "pdf", "DOCUMENT_NO_TEXT"),
        (encrypted(text_pdf(PAGES)), "pdf", "DOCUMENT_ENCRYPTED"),
        (b"%PDF-1.4\n1 0 obj garbage \xff\xfe endobj\n" * 20, "pdf", "DOCUMENT_CORRUPT"),
        (text_pdf(PAGES)[:300], "pdf", "DOCUMENT_CORRUPT"),
        (b"PK\x03\x04 a zip file, not a PDF", "pdf", "DOCUMENT_TYPE_MISMATCH"),
        (b"# Rules\n\nplain Markdown", "pdf", "DOCUMENT_TYPE_MISMATCH"),
        (text_pdf(PAGES), "markdown", "DOCUMENT_TYPE_MISMATCH"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "text", "DOCUMENT_TYPE_MISMATCH"),
        (b"\xff\xfe\xfa not utf-8", "text", "DOCUMENT_TYPE_MISMATCH"),
        (b"  \n\n ", "text", "DOCUMENT_EMPTY"),
        (many_pages_pdf(3000), "pdf", "DOCUMENT_TOO_COMPLEX"),
        (bomb_pdf(), "pdf", "DOCUMENT_TOO_COMPLEX"),
    ],
    ids=[
        "scanned",
        "encrypted",
        "corrupt",
        "truncated",
        "zip-as-pdf",
        "markdown-as-pdf",
        "pdf-as-markdown",
        "png-as-text",
        "not-utf8",
        "blank",
        "3000-pages",
        "flate-bomb",
    ],
)
async def test_unreadable_files_are_refused_with_a_code(data: bytes, fmt: str, code: str) -> None:
    """A file that cannot be read as what it claims is refused with a clear code, fast."""
    started = time.monotonic()
    with pytest.raises(DocumentRejected) as caught:
        await read_document(data, fmt)  # type: ignore[arg-type]
    assert caught.value.error_code == code
    assert caught.value.status_code == 422
    assert time.monotonic() - started < 5


async def test_time_limit_refuses_a_slow_pdf() -> None:
    """A PDF that takes longer than the time limit to read is refused (the loop is free)."""
    big = text_pdf(
        [[f"Line {i} of page {p} with some words" for i in range(40)] for p in range(400)]
    )
    with pytest.raises(DocumentRejected) as caught:
        await read_document(big, "pdf", time_limit=0.01)
    assert caught.value.error_code == "DOCUMENT_TOO_COMPLEX"


@pytest.mark.parametrize(
    ("filename", "content_type", "declared", "expected"),
    [
        ("rules.pdf", None, None, "pdf"),
        ("rules.bin", "application/pdf", None, "pdf"),
        ("faq.md", "application/octet-stream", None, "markdown"),
        ("notes", None, None, "text"),
        ("rules.pdf", "application/pdf", "markdown", "markdown"),
    ],
)
def test_the_claimed_format(
    filename: str, content_type: str | None, declared: str | None, expected: str
) -> None:
    """The form's format wins, then the media type, then the file name's suffix."""
    assert sniff_format(filename, content_type, declared) == expected


async def test_pdfs_uploaded_at_once_are_read_two_at_a_time() -> None:
    """Six PDFs read at once: every one is read, by at most PDF_READERS children at a
    time (each child holds a whole document and pypdf)."""
    from chat_server.document_text import PDF_READERS

    pdf = many_pages_pdf(60)
    most = 0
    reading = True

    def children() -> int:
        mine = str(os.getpid())
        count = 0
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
                cmdline = (status.parent / "cmdline").read_bytes()
            except OSError:
                continue
            if f"\nPPid:\t{mine}\n" in text and b"chat_server.document_text" in cmdline:
                count += 1
        return count

    async def watch() -> None:
        nonlocal most
        while reading:
            most = max(most, await asyncio.to_thread(children))
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    try:
        read = await asyncio.gather(*(read_document(pdf, "pdf") for _ in range(6)))
    finally:
        reading = False
        await watcher
    assert [r.pages for r in read] == [60] * 6
    assert 1 <= most <= PDF_READERS
