"""Request and response bodies of the REST side: what ``/openapi.json`` promises."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from chat_server.text import unstorable

__all__ = [
    "DocumentIn",
    "DocumentOut",
    "DocumentUpload",
    "DocumentsOut",
    "ErrorBody",
    "FlagIn",
    "FlagOut",
    "FlagsOut",
    "GameCreate",
    "GameOut",
    "GamePatch",
    "GamesPage",
    "ImportIn",
    "QuotaOut",
]

GameStatus = Literal["active", "beta", "hidden"]
Name = Annotated[str, Field(min_length=1, max_length=300)]
Section = Annotated[str, Field(min_length=1, max_length=100)]
# http(s) only: a javascript: or data: URL would run or show in the admin page and apps.
Url = Annotated[str, Field(max_length=1000, pattern=r"^(?i:https?)://[^\s]+$")]


def web_url(value: str | None) -> str | None:
    """``value`` if it is an http(s) URL, else None (what was stored before the rule)."""
    if value and value[:8].lower().startswith(("http://", "https://")):
        return value
    return None


Count = Annotated[int, Field(ge=0, le=100_000)]


class ErrorBody(BaseModel):
    """Every error, 422 included; every field is always sent (``context`` may be ``{}``)."""

    detail: str = Field(description="Human-readable text")
    error_code: str = Field(description="Stable code, e.g. GAME_NOT_FOUND")
    context: dict[str, Any] = Field(description="Machine-readable details; may be empty")


class GameOut(BaseModel):
    id: str
    bgg_id: int | None
    name: str
    status: GameStatus
    section: str | None
    min_players: int | None
    max_players: int | None
    playing_time: int | None
    rating: float | None
    thumbnail_url: str | None
    image_url: str | None
    last_synced_at: datetime | None

    @field_validator("thumbnail_url", "image_url")
    @classmethod
    def _web_only(cls, value: str | None) -> str | None:
        return web_url(value)


class GamesPage(BaseModel):
    games: list[GameOut]
    next_cursor: str | None


class _In(BaseModel):
    """Request bodies take exactly what the schema says: no unknown field, no coercion
    ("5" is not 5, "yes" is not true), so a schema-driven client meets no surprise."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        """Refuse (422) what no database stores: text holding NUL (PostgreSQL refuses it)
        and NaN or infinite numbers (not JSON; PostgreSQL refuses them, SQLite makes them
        null)."""
        problem = _unstorable(value)
        if problem:
            raise ValueError(problem)
        return value


def _unstorable(value: Any) -> str | None:
    if isinstance(value, str):
        return "must not contain NUL characters or lone surrogates" if unstorable(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else "numbers must be finite"
    if isinstance(value, dict):
        items: list[Any] = [*value.keys(), *value.values()]
        return next((p for p in map(_unstorable, items) if p), None)
    if isinstance(value, list):
        return next((p for p in map(_unstorable, value) if p), None)
    return None


class GameCreate(_In):
    bgg_id: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)] | None = None
    name: Name
    status: GameStatus = "active"
    section: Section | None = None
    min_players: Count | None = None
    max_players: Count | None = None
    playing_time: Count | None = None
    rating: Annotated[float, Field(ge=0, le=10)] | None = None
    thumbnail_url: Url | None = None
    image_url: Url | None = None
    description: Annotated[str, Field(max_length=100_000)] | None = None


GlossaryWord = Annotated[str, Field(min_length=1, max_length=100)]
Glossary = Annotated[
    dict[GlossaryWord, Annotated[list[GlossaryWord], Field(min_length=1, max_length=50)]],
    Field(max_length=500),
]


class DetailsPatch(_In):
    """The game details staff may change. ``glossary``: each of the rulebook's own terms
    with the words players use for it (``{"Delver": ["worker", "meeple"]}``), used to find
    the rule a question means; null removes it."""

    glossary: Glossary | None = None


class GlossaryOut(BaseModel):
    """A game's glossary as stored: each of the rulebook's terms with the players' words."""

    glossary: dict[str, list[str]]


class GamePatch(_In):
    name: Name | None = None
    status: GameStatus | None = None
    section: Section | None = None
    min_players: Count | None = None
    max_players: Count | None = None
    playing_time: Count | None = None
    rating: Annotated[float, Field(ge=0, le=10)] | None = None
    thumbnail_url: Url | None = None
    image_url: Url | None = None
    description: Annotated[str, Field(max_length=100_000)] | None = None
    details: DetailsPatch | None = None


class ImportIn(_In):
    bgg_id: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]
    status: GameStatus | None = None
    section: Section | None = None


class DocumentIn(_In):
    language: Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?$")] = "en"
    title: Name
    content: Annotated[str, Field(min_length=1, max_length=2_000_000)]
    format: Literal["text", "markdown"] = "text"
    kind: Literal["rulebook", "faq", "errata", "expansion"] = "rulebook"
    openai_vector_store_id: Annotated[str, Field(max_length=100)] | None = None


DocumentKind = Literal["rulebook", "faq", "errata", "expansion"]


class DocumentUpload(_In):
    """The text fields of a ``multipart/form-data`` upload, beside its ``file``."""

    file: Annotated[bytes, Field(description="The PDF, Markdown or text file")] = b""
    language: Annotated[str, Field(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})?$")] = "en"
    title: Name | None = Field(default=None, description="Default: the file's name")
    kind: DocumentKind = "rulebook"
    format: Literal["pdf", "markdown", "text"] | None = Field(
        default=None, description="Default: from the file's media type, else its name"
    )


class DocumentOut(BaseModel):
    id: str
    game_id: str
    title: str
    language: str
    kind: str
    format: str
    media_type: str | None
    pages: int | None
    passages: int
    bytes: int
    created_at: datetime
    updated_at: datetime | None


class DocumentsOut(BaseModel):
    documents: list[DocumentOut]


class FlagIn(_In):
    feature_key: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]
    scope_type: Literal["global", "section", "game", "user"]
    scope_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    role: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    environment: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    enabled: bool
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _daily_limit(cls, value: dict[str, Any]) -> dict[str, Any]:
        limit = value.get("daily_limit")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
        ):
            raise ValueError("metadata.daily_limit must be a non-negative integer")
        return value

    @model_validator(mode="after")
    def _scope(self) -> FlagIn:
        if self.scope_type == "global" and self.scope_id is not None:
            raise ValueError("scope_id must be absent for a global flag")
        if self.scope_type != "global" and self.scope_id is None:
            raise ValueError(f"scope_id is required for a {self.scope_type} flag")
        return self


class FlagOut(BaseModel):
    id: str
    feature_key: str
    scope_type: str
    scope_id: str | None
    role: str | None
    environment: str
    enabled: bool
    metadata: dict[str, Any]


class FlagsOut(BaseModel):
    flags: list[FlagOut]


class QuotaOut(BaseModel):
    feature: str
    daily_limit: int | None
    used: int
    remaining: int | None
    resets_at: datetime
