"""Valid text out of whatever a provider sends: surrogates and NUL mended.

A provider's JSON may escape one character as a surrogate pair split across two
events (``"\\ud83c"`` ending one, ``"\\udfb2"`` starting the next), or send a lone
surrogate or a ``\\u0000``: legal JSON, but such a ``str`` cannot be encoded as UTF-8
(the WebSocket send fails) nor stored (Postgres refuses NUL in text). ``Mender``
holds back a high surrogate that ends a delta until the next one shows whether its
pair follows, joins pairs, and turns every lone surrogate and NUL into U+FFFD.
``clean()`` does the same for one whole string (a citation's quote, a frame's JSON,
an answer about to be stored); ``unstorable()`` says whether a client's string holds
what the contract refuses (NUL, a lone surrogate), and ``cut()`` shortens an echo of
client input.

Text that is ASCII without NUL, the common case, costs two C-level scans.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "ECHO_CHARS",
    "REPLACEMENT",
    "Mender",
    "clean",
    "cut",
    "unstorable",
    "unstorable_json",
    "unstorable_value",
]

REPLACEMENT = "\ufffd"
ECHO_CHARS = 200  # client input echoed in an error: at most this much of it
_SUSPECT = re.compile("[\x00\ud800-\udfff]")


def clean(text: str) -> str:
    """``text`` with surrogate pairs joined and lone surrogates and NUL as U+FFFD."""
    if _SUSPECT.search(text) is None:
        return text
    text = text.replace("\x00", REPLACEMENT)
    # UTF-16 round trip: a pair of surrogate code units becomes its character, a
    # lone one cannot be decoded and becomes U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def unstorable(text: str) -> bool:
    """``text`` holds a NUL or a surrogate (in a ``str`` from JSON: a lone one, or a
    pair left as two code units, which no encoder takes either)."""
    return _SUSPECT.search(text) is not None


# Only a \u escape can put a NUL or a surrogate in a str decoded from valid UTF-8 JSON.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def unstorable_json(raw: str, data: Any) -> bool:
    """Any string or key of ``data`` (parsed from the JSON text ``raw``) holds NUL or a
    surrogate. Looks at the values only when ``raw`` has a suspect escape."""
    return _SUSPECT_ESCAPE.search(raw) is not None and unstorable_value(data)


def unstorable_value(data: Any) -> bool:
    """Any string or key in ``data`` (JSON values) holds NUL or a surrogate (no recursion)."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if unstorable(value):
                return True
        elif isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def cut(text: str, limit: int = ECHO_CHARS) -> str:
    """``text`` as an error may echo it: ``limit`` characters at most, marked if cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Mender:
    """Mends one stream's text deltas in order; ``flush()`` at the stream's end."""

    __slots__ = ("_high",)

    def __init__(self) -> None:
        self._high = ""  # a high surrogate that ended the last delta

    def text(self, text: str) -> str:
        """The mended ``text`` (may be empty while a high surrogate is held back)."""
        if self._high:
            text = self._high + text
            self._high = ""
        elif text.isascii() and "\x00" not in text:
            return text
        if "\ud800" <= text[-1:] <= "\udbff":
            self._high = text[-1]
            text = text[:-1]
        return clean(text)

    def flush(self) -> str:
        """What is still held back: a high surrogate alone is U+FFFD."""
        if self._high:
            self._high = ""
            return REPLACEMENT
        return ""
