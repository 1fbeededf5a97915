"""Server-Sent Events read by the WHATWG event-stream rules, from raw bytes, fast.

The openai and anthropic adapters read their upstream's event stream from raw bytes
(the SDKs' typed streams cost most of a token's CPU), and the gemini adapter re-frames
its upstream's stream through the same reader before the SDK's simpler one sees it.
``SSEReader.feed()`` takes the body's chunks as they come off the socket, cut
anywhere, and returns the events they complete:

- a line ends with CR LF, LF or CR, and with nothing else (U+2028, U+2029 and U+0085
  inside a JSON string are text); a CR LF cut between two reads is one line end;
- a UTF-8 byte order mark at the very start of the stream is ignored;
- ``data:`` lines of one event are joined with LF; one space after the colon is
  dropped; a line with no colon is a field with an empty value;
- comments (``:`` first) and ``retry:`` are skipped; ``event:`` names the event;
  ``id:`` is kept as ``last_id`` (unless it holds a NUL);
- an event is dispatched at its blank line, and only if it had a ``data`` field;
  an event left without its blank line when the body ends whole is dispatched then
  (``close()``; the one departure from the standard, which drops it).

One event holds at most ``MAX_EVENT_BYTES`` (16 MiB) of data: past that the stream is
a ``ProviderError``, so an upstream cannot fill the memory with one endless line. Data
lines are joined once, at the event's end (never copied once per line).

Event data is decoded as UTF-8, an invalid byte becoming U+FFFD (as the standard
decodes the whole stream). Any split of the same bytes gives the same events: a test
compares the reader with the openai SDK's own decoder over random framings and cuts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..errors import ProviderError

__all__ = ["MAX_EVENT_BYTES", "SSEReader", "event_data", "reframe"]

_BOM = b"\xef\xbb\xbf"
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one event's data, at most: the rest of a turn's memory


def _too_large() -> ProviderError:
    return ProviderError(f"the provider sent an event over {MAX_EVENT_BYTES >> 20} MiB")


class SSEReader:
    """An incremental event-stream parser for one response (no I/O)."""

    __slots__ = (
        "_data",
        "_event",
        "_head",
        "_more",
        "_pieces",
        "_size",
        "_skip_lf",
        "_unfinished",
        "last_id",
    )

    def __init__(self) -> None:
        self._data: bytes | None = None  # the event's first data line; None: no data field
        self._more: list[bytes] | None = None  # all its data lines, once there are two
        self._size = 0  # bytes of data in the event so far
        self._event = b""
        self._head: bytes | None = b""  # bytes seen before the BOM is decided; None: decided
        self._pieces: list[bytes] = []  # an unfinished line, in the chunks it came in
        self._unfinished = 0  # bytes in those pieces
        self._skip_lf = False  # the last chunk ended with CR: a LF now ends nothing
        self.last_id = ""

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """The ``(event type, data)`` of each event that ``chunk`` completes.

        Raises ``ProviderError`` when one event grows past ``MAX_EVENT_BYTES``.
        """
        if self._head is not None:
            head = self._head + chunk
            if len(head) < 3 and _BOM.startswith(head):
                self._head = head
                return []
            self._head = None
            chunk = head[3:] if head.startswith(_BOM) else head
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        elif b"\n" not in chunk:
            if chunk:
                self._pieces.append(chunk)
                self._unfinished += len(chunk)
                if self._unfinished + self._size > MAX_EVENT_BYTES:
                    raise _too_large()
            return []
        if self._pieces:
            self._pieces.append(chunk)
            chunk = b"".join(self._pieces)
            self._pieces.clear()
            self._unfinished = 0
        lines = chunk.split(b"\n")
        rest = lines.pop()
        if rest:
            self._pieces.append(rest)
            self._unfinished = len(rest)
        out: list[tuple[str, str]] = []
        data, more, size = self._data, self._more, self._size
        for line in lines:
            if line.startswith(b"data: "):
                value = line[6:]
            elif not line:
                if data is not None:
                    raw = data if more is None else b"\n".join(more)
                    event = self._event.decode("utf-8", "replace")
                    out.append((event, raw.decode("utf-8", "replace")))
                    data = more = None
                    size = 0
                self._event = b""
                continue
            elif line.startswith(b"data:"):
                value = line[5:]
            elif line[0] == 0x3A:  # ":" a comment
                continue
            else:
                name, colon, value = line.partition(b":")
                if colon and value[:1] == b" ":
                    value = value[1:]
                if name != b"data":
                    if name == b"event":
                        self._event = value
                    elif name == b"id" and b"\0" not in value:
                        self.last_id = value.decode("utf-8", "replace")
                    continue  # retry and unknown fields: nothing to do
            if data is None:
                data = value
            elif more is None:
                more = [data, value]  # joined once, at the blank line (not n² copies)
            else:
                more.append(value)
            size += len(value) + 1
            if size > MAX_EVENT_BYTES:
                raise _too_large()
        self._data, self._more, self._size = data, more, size
        return out

    def close(self) -> list[tuple[str, str]]:
        """The body ended cleanly: the event it was in the middle of, if any.

        The standard drops an event whose blank line never came; a proxy that ends
        the body right after the last event's data line would then lose the usage
        it carries, so the end of a whole body ends the event too. (A body that is
        cut off raises before this is called: nothing of it is dispatched.)
        """
        return self.feed(b"\n\n")


def reframe(events: list[tuple[str, str]]) -> bytes:
    """Events written back in the plainest framing (``event:``/``data: `` lines, LF)."""
    out = []
    for event, data in events:
        if event:
            out.append(f"event: {event}\n")
        for line in data.split("\n"):
            out.append(f"data: {line}\n")
        out.append("\n")
    return "".join(out).encode("utf-8", "replace")


async def event_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The data of each event in a body's chunks (the event types are not needed)."""
    reader = SSEReader()
    async for chunk in chunks:
        for _event, data in reader.feed(chunk):
            yield data
    for _event, data in reader.close():
        yield data
