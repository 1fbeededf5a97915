"""Rulebooks: stored per game and language, split into passages, searched for grounding."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from ..rulebooks import Passage, split_passages
from .engine import Database
from .fulltext import index_passages, search_passages
from .ids import new_id, utcnow
from .schema import document_passages, game_documents

__all__ = ["Retrieval", "add_document", "game_languages", "retrieve", "serving_language"]

BULK_TIMEOUT = 120.0  # a big rulebook: thousands of passages to insert and index


@dataclass(frozen=True, slots=True)
class Retrieval:
    """What grounding found: the passages, whether they matched the question, and
    whether the game has any rulebook at all."""

    passages: list[Passage]
    matched: bool
    has_documents: bool


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


async def add_document(
    db: Database,
    *,
    game_id: str,
    language: str,
    title: str,
    content: str,
    fmt: str,
    kind: str = "rulebook",
    openai_vector_store_id: str | None = None,
) -> dict[str, Any]:
    """Store a rulebook (or a FAQ, errata, expansion: ``kind``) and index its passages in
    one transaction."""
    doc_id = new_id()
    now = utcnow()
    rows: list[dict[str, object]] = [
        {
            "id": new_id(),
            "document_id": doc_id,
            "game_id": game_id,
            "language": language,
            "ordinal": i,
            "heading": p.heading,
            "text": p.text,
            "kind": kind,
        }
        for i, p in enumerate(split_passages(content, fmt))
    ]
    async with db.write(timeout=BULK_TIMEOUT) as conn:
        await conn.execute(
            game_documents.insert().values(
                id=doc_id,
                game_id=game_id,
                language=language,
                title=title,
                format=fmt,
                content=content,
                kind=kind,
                bytes=len(content.encode("utf-8", "surrogatepass")),
                openai_vector_store_id=openai_vector_store_id,
                created_at=now,
                updated_at=now,
            )
        )
        if rows:
            await conn.execute(document_passages.insert(), rows)
            await index_passages(conn, db.dialect, rows)
    return {
        "id": doc_id,
        "game_id": game_id,
        "language": language,
        "title": title,
        "format": fmt,
        "kind": kind,
        "passages": len(rows),
        "created_at": now,
    }


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
    languages: Collection[str] | None = None,
) -> Retrieval:
    """The game's passages that best match ``question`` in ``language``.

    Searches the stored language that serves ``language`` (see ``serving_language``),
    else every language of the game; when nothing matches the question, answers with
    the rulebook's opening passages (``matched`` False). ``languages``: the game's
    (``game_languages``), when the caller knows them; read here otherwise. One
    statement when the question matches.
    """
    if languages is None:
        languages = await game_languages(db, game_id)
    if not languages:
        return Retrieval([], matched=False, has_documents=False)
    lang = serving_language(language, languages)
    rows = await search_passages(db, game_id=game_id, language=lang, question=question, limit=limit)
    matched = bool(rows)
    if not rows:
        query = (
            select(document_passages, game_documents.c.title)
            .join(game_documents, game_documents.c.id == document_passages.c.document_id)
            .where(document_passages.c.game_id == game_id)
            .order_by(document_passages.c.document_id, document_passages.c.ordinal)
            .limit(min(limit, 2))
        )
        if lang:
            query = query.where(document_passages.c.language == lang)
        async with db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
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
        for i, r in enumerate(rows)
    ]
    return Retrieval(passages, matched=matched, has_documents=True)
