"""A ``multipart/form-data`` upload read as it streams in, within fixed bounds.

Starlette's own form parser spools files to disk without a size limit; this reader
keeps the one file in memory and stops at ``max_file_bytes`` (413 at once, before the
rest of the body is read), each text field at ``MAX_FIELD_BYTES`` and the number of
parts at ``MAX_PARTS``, the time to send it all at ``UPLOAD_TIMEOUT``. Nothing of the
upload is written anywhere.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from chat_server.errors import InvalidInput, RequestTimeout, TooLarge

__all__ = ["MAX_FIELD_BYTES", "MAX_PARTS", "UPLOAD_TIMEOUT", "Upload", "read_upload"]

MAX_FIELD_BYTES = 4096
MAX_PARTS = 16
UPLOAD_TIMEOUT = 300.0  # seconds for the whole body: 20 MiB at about 70 KB/s


@dataclass(slots=True)
class Upload:
    """The form's text fields and its one file (``file``)."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    content_type: str | None = None
    data: bytes = b""


def _invalid(message: str, where: str = "file") -> InvalidInput:
    error = {"loc": ["body", where], "msg": message, "type": "multipart"}
    return InvalidInput(f"{where}: {message}", context={"errors": [error]})


class _Reader:
    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.upload = Upload()
        self.parts = 0
        self._buffer = bytearray()
        self._file = bytearray()
        self._is_file = False
        self.seen_file = False
        self._name = ""
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _invalid(f"more than {MAX_PARTS} parts", "body")
        self._buffer.clear()
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise _invalid("a part has no name", "body")
        self._name = name.decode("utf-8", "replace")
        self._is_file = b"filename" in options
        if self._is_file:
            if self._name != "file" or self.seen_file:
                raise _invalid("one file only, in the field 'file'", self._name)
            self.seen_file = True
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")
            content_type = self._headers.get(b"content-type")
            self.upload.content_type = content_type.decode("latin-1") if content_type else None

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            if len(self._file) + (end - start) > self.max_file_bytes:
                raise TooLarge(
                    f"the file is larger than {self.max_file_bytes} bytes",
                    error_code="DOCUMENT_TOO_LARGE",
                    context={"max_bytes": self.max_file_bytes},
                )
            self._file += data[start:end]
        else:
            if len(self._buffer) + (end - start) > MAX_FIELD_BYTES:
                raise _invalid(f"longer than {MAX_FIELD_BYTES} bytes", self._name)
            self._buffer += data[start:end]

    def on_part_end(self) -> None:
        if self._is_file:
            self.upload.data = bytes(self._file)
            self._file = bytearray()
            return
        try:
            self.upload.fields[self._name] = self._buffer.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid("not UTF-8", self._name) from exc


async def read_upload(
    request: Request, max_file_bytes: int, *, timeout: float = UPLOAD_TIMEOUT
) -> Upload:
    """Read the form; ``TooLarge`` (413) as soon as the file passes ``max_file_bytes``,
    ``InvalidInput`` (422) for a malformed form or one without a ``file``,
    ``RequestTimeout`` (408) if the whole body takes longer than ``timeout``."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise _invalid("multipart/form-data without a boundary", "body")
    reader = _Reader(max_file_bytes)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": reader.on_part_begin,
            "on_part_data": reader.on_part_data,
            "on_part_end": reader.on_part_end,
            "on_header_field": reader.on_header_field,
            "on_header_value": reader.on_header_value,
            "on_header_end": reader.on_header_end,
            "on_headers_finished": reader.on_headers_finished,
        },
    )
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise _invalid(f"malformed multipart body ({exc})", "body") from exc
    except TimeoutError as exc:
        raise RequestTimeout(
            f"the upload did not arrive within {timeout:.0f} s",
            error_code="UPLOAD_TIMEOUT",
        ) from exc
    if not reader.seen_file:
        raise _invalid("field required", "file")
    return reader.upload
