"""Opaque keyset cursors: ``next_cursor`` is the last row's sort key, base64-encoded."""

from __future__ import annotations

import base64
import json
from typing import Any

from ..errors import InvalidInput
from ..text import unstorable

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(*key: Any) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not valid", error_code="INVALID_CURSOR") from exc
    if (
        not isinstance(key, list)
        or len(key) != size
        or not all(isinstance(k, str) and not unstorable(k) for k in key)
    ):
        raise InvalidInput("cursor is not valid", error_code="INVALID_CURSOR")
    return key
