"""Rulebooks: stored per game and language, split into passages, searched for grounding."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..document_text import MEDIA_TYPES, PageText
from ..errors import NotFound
from ..retrieval.index import Indexes
from ..retrieval.search import rank
from ..rulebooks import Passage, split_passages
from .engine import Database
from .fulltext import delete_document as forget_index
from .fulltext import index_passages
from .ids import as_utc, new_id, utcnow
from .schema import document_files, document_passages, game_documents

__all__ = [
    "DocumentBody",
    "Retrieval",
    "add_document",
    "delete_document",
    "game_languages",
    "list_documents",
    "replace_document",
    "retrieve",
    "serving_language",
]

BULK_TIMEOUT = 120.0  # a big rulebook: thousands of passages to insert and index


@dataclass(frozen=True, slots=True)
class Retrieval:
    """What grounding found: the passages, whether they matched the question, whether
    the game has any rulebook at all, and whether its rules are silent on the question."""

    passages: list[Passage]
    matched: bool
    has_documents: bool
    silent: bool = False  # the game has rules, but none answers the question


def serving_language(wanted: str, available: Iterable[str]) -> str | None:
    """The stored language that serves a session in ``wanted``, or None for "all of them".

    Case is ignored and a regional variant is served by its base language and the
    other way round (``en-GB`` by ``en``, ``fr`` by ``fr-CA``).
    """
    by_lower = {a.lower(): a for a in sorted(available)}
    want = wanted.lower()
    if want in by_lower:
        return by_lower[want]
    base = want.split("-")[0]
    if base in by_lower:
        return by_lower[base]
    return next((a for low, a in by_lower.items() if low.split("-")[0] == base), None)


@dataclass(frozen=True, slots=True)
class DocumentBody:
    """What a document holds: its text (per page for a PDF) and, for an upload, the
    original file (``data`` kept here, or ``storage_key`` naming it in Supabase Storage)."""

    language: str
    title: str
    kind: str
    fmt: str  # "text", "markdown" or "pdf"
    texts: list[PageText]
    media_type: str
    pages: int | None = None
    size: int = 0  # the original's bytes
    data: bytes | None = None
    storage_key: str | None = None
    openai_vector_store_id: str | None = None

    @classmethod
    def from_text(
        cls, *, language: str, title: str, content: str, fmt: str, kind: str = "rulebook"
    ) -> DocumentBody:
        """A document posted as text or Markdown (no original file: its text is it)."""
        return cls(
            language=language,
            title=title,
            kind=kind,
            fmt=fmt,
            texts=[PageText(None, content)],
            media_type=MEDIA_TYPES.get(fmt, MEDIA_TYPES["text"]),
            size=len(content.encode("utf-8", "surrogatepass")),
        )

    @property
    def content(self) -> str:
        return "\n\n".join(t.text for t in self.texts)


def _passage_rows(doc_id: str, game_id: str, body: DocumentBody) -> list[dict[str, object]]:
    """The document's passages, numbered through the whole document; a PDF's keep their page."""
    split_as = "markdown" if body.fmt == "markdown" else "text"
    rows: list[dict[str, object]] = []
    for part in body.texts:
        for p in split_passages(part.text, split_as):
            rows.append(
                {
                    "id": new_id(),
                    "document_id": doc_id,
                    "game_id": game_id,
                    "language": body.language,
                    "ordinal": len(rows),
                    "heading": p.heading,
                    "text": p.text,
                    "kind": body.kind,
                    "page": part.page,
                }
            )
    return rows


def _document_values(body: DocumentBody) -> dict[str, object]:
    return {
        "language": body.language,
        "title": body.title,
        "format": body.fmt,
        "content": body.content,
        "kind": body.kind,
        "media_type": body.media_type,
        "pages": body.pages,
        "bytes": body.size,
        "openai_vector_store_id": body.openai_vector_store_id,
    }


async def _store_passages(
    conn: AsyncConnection, db: Database, rows: list[dict[str, object]]
) -> None:
    if rows:
        await conn.execute(document_passages.insert(), rows)
        await index_passages(conn, db.dialect, rows)


async def _forget_passages(conn: AsyncConnection, db: Database, doc_id: str) -> None:
    ids = list(
        (
            await conn.execute(
                select(document_passages.c.id).where(document_passages.c.document_id == doc_id)
            )
        ).scalars()
    )
    await forget_index(conn, db.dialect, ids)
    await conn.execute(document_passages.delete().where(document_passages.c.document_id == doc_id))


async def add_document(
    db: Database,
    *,
    game_id: str,
    language: str = "en",
    title: str = "",
    content: str = "",
    fmt: str = "text",
    kind: str = "rulebook",
    openai_vector_store_id: str | None = None,
    body: DocumentBody | None = None,
) -> dict[str, Any]:
    """Store a rulebook (or a FAQ, errata, expansion: ``kind``), its original file and
    its indexed passages in one transaction; answers the Document. ``body`` for an
    upload; else the text ``content`` in ``fmt``."""
    if body is None:
        body = DocumentBody.from_text(
            language=language, title=title, content=content, fmt=fmt, kind=kind
        )
        if openai_vector_store_id:
            body = replace(body, openai_vector_store_id=openai_vector_store_id)
    doc_id = new_id()
    now = utcnow()
    rows = _passage_rows(doc_id, game_id, body)
    async with db.write(timeout=BULK_TIMEOUT) as conn:
        await conn.execute(
            game_documents.insert().values(
                id=doc_id, game_id=game_id, created_at=now, updated_at=now, **_document_values(body)
            )
        )
        if body.data is not None or body.storage_key is not None:
            await conn.execute(
                document_files.insert().values(
                    document_id=doc_id, data=body.data, storage_key=body.storage_key
                )
            )
        await _store_passages(conn, db, rows)
    return _document_out(doc_id, game_id, body, len(rows), now, now)


def _document_out(
    doc_id: str,
    game_id: str,
    body: DocumentBody,
    passages: int,
    created_at: datetime,
    updated_at: datetime | None,
) -> dict[str, Any]:
    return {
        "id": doc_id,
        "game_id": game_id,
        "title": body.title,
        "language": body.language,
        "kind": body.kind,
        "format": body.fmt,
        "media_type": body.media_type,
        "pages": body.pages,
        "passages": passages,
        "bytes": body.size,
        "created_at": created_at,
        "updated_at": updated_at,
    }


async def _take_content(conn: AsyncConnection, db: Database, *, game_id: str, doc_id: str) -> Any:
    """Inside a write: remove a document's passages and stored file, keeping its row;
    answers its ``created_at`` and the Storage key of the file. ``NotFound`` if the game
    has no such document."""
    found = (
        await conn.execute(
            select(game_documents.c.created_at, document_files.c.storage_key)
            .select_from(game_documents.outerjoin(document_files))
            .where(game_documents.c.id == doc_id, game_documents.c.game_id == game_id)
        )
    ).first()
    if found is None:
        raise NotFound("document not found", error_code="DOCUMENT_NOT_FOUND")
    await _forget_passages(conn, db, doc_id)
    await conn.execute(document_files.delete().where(document_files.c.document_id == doc_id))
    return found


async def replace_document(
    db: Database, *, game_id: str, doc_id: str, body: DocumentBody
) -> tuple[dict[str, Any], str | None]:
    """Replace a document's content, file and passages in one transaction (readers see
    the old passages until it commits); answers the Document and the Storage key of the
    file it replaced (to remove once committed). ``NotFound`` if there is no such document."""
    now = utcnow()
    rows = _passage_rows(doc_id, game_id, body)
    async with db.write(timeout=BULK_TIMEOUT) as conn:
        found = await _take_content(conn, db, game_id=game_id, doc_id=doc_id)
        await conn.execute(
            game_documents.update()
            .where(game_documents.c.id == doc_id)
            .values(updated_at=now, **_document_values(body))
        )
        if body.data is not None or body.storage_key is not None:
            await conn.execute(
                document_files.insert().values(
                    document_id=doc_id, data=body.data, storage_key=body.storage_key
                )
            )
        await _store_passages(conn, db, rows)
    old_key = found.storage_key if found.storage_key != body.storage_key else None
    created = as_utc(found.created_at)
    return _document_out(doc_id, game_id, body, len(rows), created, now), old_key


async def delete_document(db: Database, *, game_id: str, doc_id: str) -> str | None:
    """Delete a document, its passages and file in one transaction; answers the Storage
    key of its file (to remove once committed). ``NotFound`` if there is no such document."""
    async with db.write(timeout=BULK_TIMEOUT) as conn:
        found = await _take_content(conn, db, game_id=game_id, doc_id=doc_id)
        await conn.execute(game_documents.delete().where(game_documents.c.id == doc_id))
    key: str | None = found.storage_key
    return key


_LISTED = (
    game_documents.c.id,
    game_documents.c.game_id,
    game_documents.c.title,
    game_documents.c.language,
    game_documents.c.kind,
    game_documents.c.format,
    game_documents.c.media_type,
    game_documents.c.pages,
    game_documents.c.bytes,
    game_documents.c.created_at,
    game_documents.c.updated_at,
)


async def list_documents(db: Database, game_id: str) -> list[dict[str, Any]]:
    """The game's documents, oldest first, each with its number of passages."""
    counts = (
        select(document_passages.c.document_id, func.count().label("passages"))
        .where(document_passages.c.game_id == game_id)
        .group_by(document_passages.c.document_id)
        .subquery()
    )
    query = (
        select(*_LISTED, func.coalesce(counts.c.passages, 0).label("passages"))
        .select_from(game_documents.outerjoin(counts, counts.c.document_id == game_documents.c.id))
        .where(game_documents.c.game_id == game_id)
        .order_by(game_documents.c.created_at, game_documents.c.id)
    )
    async with db.read() as conn:
        rows = (await conn.execute(query)).mappings().all()
    return [
        {**r, "created_at": as_utc(r["created_at"]), "updated_at": as_utc(r["updated_at"])}
        for r in rows
    ]


async def game_languages(db: Database, game_id: str) -> frozenset[str]:
    """The languages the game has rulebook passages in (empty: no rulebook)."""
    async with db.read() as conn:
        return frozenset(
            (
                await conn.execute(
                    select(document_passages.c.language)
                    .where(document_passages.c.game_id == game_id)
                    .distinct()
                )
            ).scalars()
        )


async def retrieve(
    db: Database,
    *,
    game_id: str,
    language: str,
    question: str,
    limit: int,
    indexes: Indexes,
    languages: Collection[str] | None = None,
) -> Retrieval:
    """The game's passages that answer ``question`` in ``language``, best first.

    Searches the stored language that serves ``language`` (see ``serving_language``),
    else every language of the game, by full-text search and by meaning, fused
    (``chat_server.retrieval``); errata come right above the rules they correct. When
    no passage clears the relevance floor, no passage is sent and ``silent`` says the
    rules do not answer the question. ``indexes``: the app's in-memory indexes of its
    games' passages (one per app, made by ``build_services``). ``languages``: the
    game's (``game_languages``), when the caller knows them; read here otherwise.
    """
    if languages is None:
        languages = await game_languages(db, game_id)
    if not languages:
        return Retrieval([], matched=False, has_documents=False)
    lang = serving_language(language, languages)
    index = await indexes.get(db, game_id)
    ranked = await rank(db, index, game_id=game_id, language=lang, question=question, limit=limit)
    passages = [
        Passage(
            id=f"p{i + 1}",
            document_id=r["document_id"],
            title=r["title"],
            heading=r["heading"],
            text=r["text"],
            ordinal=r["ordinal"],
            language=r["language"],
            kind=r["kind"],
            page=r["page"],
        )
        for i, r in enumerate(ranked.rows)
    ]
    return Retrieval(passages, matched=bool(passages), has_documents=True, silent=ranked.silent)
