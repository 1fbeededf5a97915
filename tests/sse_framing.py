"""Legal but unusual ways to frame a vendor's event stream, for ``Script.writes``.

Each function takes the stream's events in the loopback upstream's own framing (one
``bytes`` per event, lines ended by LF, or CRLF for Gemini) and returns the bytes of
each write the upstream makes. The events mean the same after any of them: a reader
that follows the WHATWG rules gets the same answer.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

__all__ = ["FRAMINGS", "Writes", "one_byte_per_write", "plain"]

Writes = Callable[[list[bytes]], list[bytes]]
BOM = b"\xef\xbb\xbf"


def _lf(events: list[bytes]) -> list[bytes]:
    return [e.replace(b"\r\n", b"\n") for e in events]


def plain(events: list[bytes]) -> list[bytes]:
    """One write per event, LF line ends."""
    return _lf(events)


def crlf(events: list[bytes]) -> list[bytes]:
    return [e.replace(b"\n", b"\r\n") for e in _lf(events)]


def lone_cr(events: list[bytes]) -> list[bytes]:
    return [e.replace(b"\n", b"\r") for e in _lf(events)]


def no_space(events: list[bytes]) -> list[bytes]:
    """``data:{...}`` and ``event:name``: the space after the colon is optional."""
    return [e.replace(b"data: ", b"data:").replace(b"event: ", b"event:") for e in _lf(events)]


def comments(events: list[bytes]) -> list[bytes]:
    """A comment line inside each event, and a comment-only block between events."""
    return [b": keep-alive\n\n" + b": note\n" + e for e in _lf(events)]


def multi_line_data(events: list[bytes]) -> list[bytes]:
    """Each event's JSON spread over several ``data:`` lines (joined again with LF)."""
    out = []
    for event in _lf(events):
        lines = []
        for line in event.split(b"\n"):
            if line.startswith(b"data: {"):
                pretty = json.dumps(json.loads(line[6:]), indent=1)  # escapes stay escapes
                lines += [b"data: " + part.encode() for part in pretty.split("\n")]
            else:
                lines.append(line)
        out.append(b"\n".join(lines))
    return out


def bom(events: list[bytes]) -> list[bytes]:
    """A UTF-8 byte order mark before the first event (to be ignored)."""
    events = _lf(events)
    return [BOM + events[0], *events[1:]] if events else [BOM]


def one_byte_per_write(events: list[bytes]) -> list[bytes]:
    body = b"".join(_lf(events))
    return [body[i : i + 1] for i in range(len(body))]


def inside_characters(events: list[bytes]) -> list[bytes]:
    """Writes cut after the first byte of every multi-byte UTF-8 character."""
    body = b"".join(_lf(events))
    cuts = [i + 1 for i, b in enumerate(body) if b >= 0xC0]
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


def crlf_cut_between(events: list[bytes]) -> list[bytes]:
    """CRLF line ends with every CR and its LF in two writes."""
    body = b"".join(crlf(events))
    return [part + b"\r" for part in body.split(b"\r")[:-1]] + [body.split(b"\r")[-1]]


FRAMINGS: dict[str, Writes] = {
    "crlf": crlf,
    "lone-cr": lone_cr,
    "no-space": no_space,
    "comments": comments,
    "multi-line-data": multi_line_data,
    "bom": bom,
    "inside-characters": inside_characters,
    "crlf-cut-between": crlf_cut_between,
    "one-byte-per-write": one_byte_per_write,
}
