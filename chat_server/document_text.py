"""An uploaded document's text: what the file is, and its text (per page for a PDF).

The bytes are checked against what the upload claims (a PDF starts ``%PDF-``; Markdown
and text are UTF-8 without NUL), then read. A PDF is read with pypdf in a child
process, within a time limit and a budget (pages, decompressed stream size, text
size), so an encrypted, corrupt, scanned or hostile file ends as a ``DocumentRejected``
(422, a clear ``error_code``) and never blocks the event loop or grows without bound.

Why a process and not a thread: pypdf holds the GIL for long stretches (measured: the
event loop stalled 270 ms while a 100-page PDF was read in a thread, 700 ms for 300
pages), which would freeze every stream the instance serves; and a process can be
killed at the time limit, where a thread would run on.

Concurrency: ``read_document`` is safe to call concurrently; each PDF gets its own
short-lived child process (``python -m chat_server.document_text``, about 0.3 s to
start), killed at the time limit; cancelling the call kills it too.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidInput

__all__ = [
    "MEDIA_TYPES",
    "DocumentRejected",
    "PageText",
    "ReadDocument",
    "read_document",
    "sniff_format",
]

log = logging.getLogger(__name__)

Format = Literal["pdf", "markdown", "text"]
MEDIA_TYPES: dict[str, str] = {
    "pdf": "application/pdf",
    "markdown": "text/markdown; charset=utf-8",
    "text": "text/plain; charset=utf-8",
}
_BY_MEDIA_TYPE = {
    "application/pdf": "pdf",
    "application/x-pdf": "pdf",
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
}
_BY_SUFFIX = {".pdf": "pdf", ".md": "markdown", ".markdown": "markdown", ".txt": "text"}

# The budget of one PDF.
PDF_MAX_PAGES = 2000
PDF_MAX_STREAM_BYTES = 50 * 1024 * 1024  # one decompressed stream
PDF_MAX_TEXT_CHARS = 5_000_000  # all pages' text together
PDF_TIME_LIMIT = 30.0  # seconds for the whole file


class DocumentRejected(InvalidInput):
    """An upload that is not a readable document of the kind it claims (422)."""


@dataclass(frozen=True, slots=True)
class PageText:
    page: int | None  # 1-based for a PDF, None for Markdown and text
    text: str


@dataclass(frozen=True, slots=True)
class ReadDocument:
    format: Format  # how its text is split: "pdf" pages are split as plain text
    media_type: str
    pages: int | None  # a PDF's page count
    texts: list[PageText]


def sniff_format(filename: str | None, content_type: str | None, declared: str | None) -> Format:
    """What the upload claims to be: the form's ``format``, else its media type, else the
    file name's suffix, else plain text."""
    if declared in ("pdf", "markdown", "text"):
        return declared  # type: ignore[return-value]
    base = (content_type or "").split(";")[0].strip().lower()
    if base in _BY_MEDIA_TYPE:
        return _BY_MEDIA_TYPE[base]  # type: ignore[return-value]
    name = (filename or "").lower()
    for suffix, fmt in _BY_SUFFIX.items():
        if name.endswith(suffix):
            return fmt  # type: ignore[return-value]
    return "text"


def _reject(code: str, message: str, **context: object) -> DocumentRejected:
    return DocumentRejected(message, error_code=code, context=dict(context))


def _read_text(data: bytes, fmt: Format) -> ReadDocument:
    if data.startswith(b"%PDF-"):
        raise _reject("DOCUMENT_TYPE_MISMATCH", f"the file is a PDF, not {fmt}", claimed=fmt)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _reject(
            "DOCUMENT_TYPE_MISMATCH", f"the file is not UTF-8 {fmt}", claimed=fmt
        ) from exc
    if "\x00" in text:
        raise _reject("DOCUMENT_TYPE_MISMATCH", f"the file is binary, not {fmt}", claimed=fmt)
    if not text.strip():
        raise _reject("DOCUMENT_EMPTY", "the file holds no text")
    return ReadDocument(fmt, MEDIA_TYPES[fmt], None, [PageText(None, text)])


def _storable(text: str) -> str:
    """Text both databases store: no NUL, no lone surrogate (some fonts' maps make them)."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _read_pdf(data: bytes, deadline: float) -> ReadDocument:
    """Every page's text (runs in a worker thread)."""
    import pypdf
    from pypdf.errors import FileNotDecryptedError, LimitReachedError, PyPdfError

    if b"%PDF-" not in data[:1024]:
        raise _reject("DOCUMENT_TYPE_MISMATCH", "the file is not a PDF", claimed="pdf")
    limits = {
        "maximum_declared_stream_length": PDF_MAX_STREAM_BYTES,
        "array_based_stream_maximum_output_length": PDF_MAX_STREAM_BYTES,
        "zlib_maximum_output_length": PDF_MAX_STREAM_BYTES,
        "lzw_maximum_output_length": PDF_MAX_STREAM_BYTES,
        "run_length_maximum_output_length": PDF_MAX_STREAM_BYTES,
        "jbig2_maximum_output_length": PDF_MAX_STREAM_BYTES,
        "page_tree_maximum_entries": PDF_MAX_PAGES * 2,
        "page_tree_maximum_page_entries": PDF_MAX_PAGES * 2,
        "jbig2dec_binary": None,  # never run an external program on an upload
    }
    texts: list[PageText] = []
    try:
        with pypdf.apply_configuration(pypdf.get_configuration().with_overwrites(**limits)):
            reader = pypdf.PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted:
                raise _reject("DOCUMENT_ENCRYPTED", "the PDF is encrypted")
            count = len(reader.pages)
            if count > PDF_MAX_PAGES:
                raise _reject(
                    "DOCUMENT_TOO_COMPLEX",
                    f"the PDF has {count} pages (at most {PDF_MAX_PAGES})",
                    pages=count,
                    max_pages=PDF_MAX_PAGES,
                )
            total = 0
            for number, page in enumerate(reader.pages, start=1):
                if time.monotonic() > deadline:
                    raise _reject("DOCUMENT_TOO_COMPLEX", "reading the PDF took too long")
                text = _storable(page.extract_text() or "")
                total += len(text)
                if total > PDF_MAX_TEXT_CHARS:
                    raise _reject(
                        "DOCUMENT_TOO_COMPLEX",
                        f"the PDF holds more than {PDF_MAX_TEXT_CHARS} characters of text",
                    )
                texts.append(PageText(number, text))
    except DocumentRejected:
        raise
    except FileNotDecryptedError as exc:
        raise _reject("DOCUMENT_ENCRYPTED", "the PDF is encrypted") from exc
    except LimitReachedError as exc:
        raise _reject("DOCUMENT_TOO_COMPLEX", "the PDF exceeds the reading limits") from exc
    except (
        PyPdfError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        Warning,
    ) as exc:
        # pypdf raises its own errors and, on some malformed files, Python's (and its
        # warnings, where they are made errors).
        raise _reject("DOCUMENT_CORRUPT", "the PDF cannot be read (corrupt)") from exc
    except RecursionError as exc:
        raise _reject("DOCUMENT_TOO_COMPLEX", "the PDF nests too deeply") from exc
    if not any(t.text.strip() for t in texts):
        raise _reject(
            "DOCUMENT_NO_TEXT",
            "the PDF has no extractable text (scanned pages?); upload a PDF with a text "
            "layer, or the text itself",
            pages=len(texts),
        )
    return ReadDocument("pdf", MEDIA_TYPES["pdf"], len(texts), texts)


def _read_pdf_worker() -> None:
    """The child process's side (``python -m chat_server.document_text``): a PDF's bytes
    on standard input, its pages or its refusal as JSON on standard output."""
    import json
    import sys

    data = sys.stdin.buffer.read()
    time_limit = float(sys.argv[1])
    try:
        document = _read_pdf(data, time.monotonic() + time_limit)
        answer: dict[str, object] = {"pages": [[t.page, t.text] for t in document.texts]}
    except DocumentRejected as exc:
        answer = {"code": exc.error_code, "message": exc.message, "context": exc.context}
    sys.stdout.write(json.dumps(answer))


def _readers() -> asyncio.Semaphore:
    """This event loop's reader slots: at most ``PDF_READERS`` children at once."""
    loop = asyncio.get_running_loop()
    slots = _READERS.get(loop)
    if slots is None:
        slots = _READERS[loop] = asyncio.Semaphore(PDF_READERS)
    return slots


async def _read_pdf_isolated(data: bytes, time_limit: float) -> ReadDocument:
    """Read a PDF in a child process, killed if it has not answered within
    ``time_limit`` seconds (plus a start-up allowance); at most ``PDF_READERS`` at
    once (each child holds a document and pypdf: uploads at once wait their turn)."""
    async with _readers():
        return await _read_in_child(data, time_limit)


async def _read_in_child(data: bytes, time_limit: float) -> ReadDocument:
    import json
    import sys

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        str(time_limit),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(time_limit + _START_ALLOWANCE):
            out, _ = await child.communicate(data)
    except TimeoutError as exc:
        log.warning("a PDF took longer than %.0f s to read; refused", time_limit)
        raise _reject("DOCUMENT_TOO_COMPLEX", "reading the PDF took too long") from exc
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    try:
        answer = json.loads(out)
    except ValueError as exc:  # the child died (out of memory, a crash in a C library)
        raise _reject("DOCUMENT_CORRUPT", "the PDF cannot be read (corrupt)") from exc
    if "code" in answer:
        raise DocumentRejected(
            str(answer["message"]), error_code=str(answer["code"]), context=answer["context"]
        )
    texts = [PageText(page, text) for page, text in answer["pages"]]
    return ReadDocument("pdf", MEDIA_TYPES["pdf"], len(texts), texts)


_START_ALLOWANCE = 10.0  # seconds for the child to start and import pypdf, on a busy host
PDF_READERS = 2  # PDF reader children at once, per process (one per core here)
_READERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


async def read_document(
    data: bytes, fmt: Format, *, time_limit: float = PDF_TIME_LIMIT
) -> ReadDocument:
    """The document's text, or ``DocumentRejected``. A PDF is read in a child process
    within ``time_limit`` seconds; Markdown and text are decoded in place (cheap)."""
    if fmt != "pdf":
        return _read_text(data, fmt)
    return await _read_pdf_isolated(data, time_limit)


if __name__ == "__main__":
    _read_pdf_worker()
