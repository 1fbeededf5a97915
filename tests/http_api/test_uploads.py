"""The bounded multipart reader (``http_api.uploads``) fed an ASGI body chunk by chunk,
as uvicorn feeds it: it stops at the file limit without reading on, and at its time limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from chat_server.errors import RequestTimeout, TooLarge
from http_api.uploads import read_upload

HEAD = (
    b'--xyz\r\nContent-Disposition: form-data; name="kind"\r\n\r\nfaq\r\n'
    b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="r.txt"\r\n'
    b"Content-Type: text/plain\r\n\r\n"
)
TAIL = b"\r\n--xyz--\r\n"


def request(chunks: list[bytes], *, stall: bool = False) -> tuple[Request, list[int]]:
    """A request whose body arrives in ``chunks`` (then never ends, with ``stall``)."""
    taken = [0]

    async def receive() -> dict[str, Any]:
        if taken[0] < len(chunks):
            taken[0] += 1
            more = stall or taken[0] < len(chunks)
            return {"type": "http.request", "body": chunks[taken[0] - 1], "more_body": more}
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [(b"content-type", b"multipart/form-data; boundary=xyz")],
    }
    return Request(scope, receive), taken


async def test_the_fields_and_the_file_are_read() -> None:
    """A form split across many chunks gives its fields and the file's name, type, bytes."""
    body = HEAD + b"Pass three cards." + TAIL
    req, _ = request([body[i : i + 7] for i in range(0, len(body), 7)])
    upload = await read_upload(req, 1024)
    assert upload.fields == {"kind": "faq"}
    assert (upload.filename, upload.content_type, upload.data) == (
        "r.txt",
        "text/plain",
        b"Pass three cards.",
    )


async def test_reading_stops_as_soon_as_the_file_passes_the_limit() -> None:
    """Past the limit the reader raises 413 without taking the rest of the body."""
    chunks = [HEAD] + [b"x" * 1000] * 50 + [TAIL]
    req, taken = request(chunks)
    with pytest.raises(TooLarge) as caught:
        await read_upload(req, 4000)
    assert caught.value.error_code == "DOCUMENT_TOO_LARGE"
    assert taken[0] <= 6


async def test_a_stalled_upload_ends_at_the_time_limit() -> None:
    """A body that stops arriving is 408 UPLOAD_TIMEOUT after the time limit."""
    req, _ = request([HEAD, b"partial"], stall=True)
    async with asyncio.timeout(5):
        with pytest.raises(RequestTimeout) as caught:
            await read_upload(req, 4000, timeout=0.2)
    assert (caught.value.status_code, caught.value.error_code) == (408, "UPLOAD_TIMEOUT")
