"""What a turn cost: model prices (USD per million tokens) and the arithmetic.

The built-in table (``BUILTIN``, taken on ``BUILTIN_AS_OF``) covers the default model of
each provider and a few of their neighbours. ``MODEL_PRICES`` names a JSON or TOML file
whose entries are laid over it (same model: the file wins)::

    {"as_of": "2026-12-06",
     "models": {"gpt-4o-mini": {"input": 0.15, "cached_input": 0.075, "output": 0.60},
                "claude-sonnet-5-5": {"input": 3, "cached_input": 0.30,
                                      "cache_write": 3.75, "output": 15}}}

``input`` and ``output`` are required; ``cached_input`` defaults to ``input``;
``cache_write`` (Anthropic's cache creation) defaults to ``input``. A model that is in
neither table has no price: its cost is ``None``, never a guess. A model name with a
date suffix (``gpt-4o-mini-2024-07-18``) takes the price of its undated name when it
has none of its own.

How the providers count (``providers.base.Usage``): OpenAI and Gemini report the whole
prompt in ``input_tokens``, cached reads included in it; Anthropic reports cache reads
and cache writes apart from ``input_tokens``. ``cost()`` prices each part once, and
``total_input()`` gives every input token the model read, the figure clients and
reports show as ``input_tokens``.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:  # config imports this module, and providers import config
    from .providers.base import Usage

__all__ = [
    "BUILTIN",
    "BUILTIN_AS_OF",
    "ModelPrice",
    "PriceTable",
    "load_prices",
    "total_input",
]

#: The day the built-in prices were taken from the vendors' list prices (standard tier,
#: no batch discount, prompts under any long-context threshold).
BUILTIN_AS_OF = "2026-12-06"

# Providers whose ``input_tokens`` exclude the cached reads and writes they report apart.
_CACHE_APART = frozenset({"anthropic"})
_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8})$")
_MAX_FILE_BYTES = 1024 * 1024


class ModelPrice(BaseModel):
    """USD per million tokens of one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, le=10_000)
    output: float = Field(ge=0, le=10_000)
    cached_input: float | None = Field(default=None, ge=0, le=10_000)
    cache_write: float | None = Field(default=None, ge=0, le=10_000)


class _PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    as_of: str | None = Field(default=None, max_length=40)
    models: dict[str, ModelPrice]


def _p(
    input: float, output: float, cached: float | None = None, write: float | None = None
) -> ModelPrice:
    return ModelPrice(input=input, output=output, cached_input=cached, cache_write=write)


#: List prices, USD per million tokens (see docs/usage.md for the sources and how to
#: update them). Anthropic cache writes are the 5-minute TTL rate (1.25x input), reads
#: 0.1x input; OpenAI cached input is the automatic prompt cache rate.
BUILTIN: Mapping[str, ModelPrice] = {
    # OpenAI
    "gpt-4o-mini": _p(0.15, 0.60, cached=0.075),
    "gpt-4o": _p(2.50, 10.00, cached=1.25),
    "gpt-4.1": _p(2.00, 8.00, cached=0.50),
    "gpt-4.1-mini": _p(0.40, 1.60, cached=0.10),
    "gpt-4.1-nano": _p(0.10, 0.40, cached=0.025),
    # Anthropic
    "claude-sonnet-5-5": _p(3.00, 15.00, cached=0.30, write=3.75),
    "claude-sonnet-4-5": _p(3.00, 15.00, cached=0.30, write=3.75),
    "claude-haiku-4-5": _p(1.00, 5.00, cached=0.10, write=1.25),
    "claude-opus-4-1": _p(15.00, 75.00, cached=1.50, write=18.75),
    # Gemini (text input; prompts up to 200k tokens for the Pro model)
    "gemini-2.5-flash": _p(0.30, 2.50, cached=0.03),
    "gemini-2.5-flash-lite": _p(0.10, 0.40, cached=0.01),
    "gemini-2.5-pro": _p(1.25, 10.00, cached=0.125),
}


def total_input(provider: str, input_tokens: int, cache_read: int, cache_write: int) -> int:
    """Every input token the model read, cached or not, whatever the provider's way."""
    if provider in _CACHE_APART:
        return input_tokens + cache_read + cache_write
    return input_tokens


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices by model name; immutable, shared by every turn."""

    models: Mapping[str, ModelPrice]
    as_of: str = BUILTIN_AS_OF

    def price(self, model: str) -> ModelPrice | None:
        found = self.models.get(model)
        if found is None and (dated := _DATED.match(model)):
            found = self.models.get(dated["base"])
        return found

    def cost(self, provider: str, model: str, usage: Usage) -> float | None:
        """USD for ``usage`` on ``model``, or ``None`` when the model has no price."""
        price = self.price(model)
        if price is None:
            return None
        cached = price.input if price.cached_input is None else price.cached_input
        write = price.input if price.cache_write is None else price.cache_write
        reads, writes = max(usage.cache_read_tokens, 0), max(usage.cache_creation_tokens, 0)
        if provider in _CACHE_APART:
            plain = usage.input_tokens
        else:  # the cached reads are part of input_tokens (and writes are not billed)
            plain, writes = usage.input_tokens - reads, 0
        total = (
            max(plain, 0) * price.input
            + reads * cached
            + writes * write
            + max(usage.output_tokens, 0) * price.output
        )
        return round(total / 1_000_000, 8)


def parse_prices(text: str, *, toml: bool) -> _PriceFile:
    """A price file's content (JSON or TOML); raises ``ValueError`` saying what is wrong."""
    try:
        raw: Any = tomllib.loads(text) if toml else json.loads(text)
    except (ValueError, RecursionError) as exc:
        kind = "TOML" if toml else "JSON"
        raise ValueError(f"not valid {kind} ({str(exc).splitlines()[0][:120]})") from None
    try:
        parsed = _PriceFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "file"
        raise ValueError(f"{where}: {err['msg']}") from None
    for name, price in parsed.models.items():
        if not name or len(name) > 100:
            raise ValueError(f"models: a model name must be 1 to 100 characters ({name[:40]!r})")
        if not all(math.isfinite(v) for v in price.model_dump(exclude_none=True).values()):
            raise ValueError(f"models.{name}: prices must be finite numbers")
    return parsed


def load_prices(path: Path | None) -> PriceTable:
    """The built-in table, with the file at ``path`` (if any) laid over it.

    Reads the file: call it at start-up, not on the event loop. Raises ``ValueError``
    with a one-line reason for a missing, unreadable or malformed file.
    """
    if path is None:
        return PriceTable(dict(BUILTIN))
    try:
        data = path.read_bytes()[: _MAX_FILE_BYTES + 1]
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    parsed = parse_prices(text, toml=path.suffix.lower() == ".toml")
    models = {**BUILTIN, **parsed.models}
    return PriceTable(models, as_of=parsed.as_of or BUILTIN_AS_OF)
