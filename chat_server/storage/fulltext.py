"""Full-text search over rulebook passages: the one place Postgres and SQLite differ.

Postgres: ``document_passages.search`` is a tsvector built with the passage language's
text-search configuration (``english``, ``french``, …; ``simple`` otherwise) and
queried with an OR of the question's words, ranked by ``ts_rank``; searching every
language of a game (no document in the session's), each passage is matched with its
own language's configuration.
SQLite: the FTS5 table ``document_passages_fts`` (porter stemming, unicode folding),
ranked by ``bm25``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection

from .engine import Database

__all__ = [
    "PG_SEARCH_COLUMN",
    "PG_SEARCH_INDEX",
    "SQLITE_FTS_TABLE",
    "delete_document",
    "index_passages",
    "pg_config",
    "search_passages",
]

# The database objects that exist on one database only (created by the migrations).
PG_SEARCH_COLUMN = "search"
PG_SEARCH_INDEX = "ix_document_passages_search"
SQLITE_FTS_TABLE = "document_passages_fts"

PG_CONFIGS = {
    "da": "danish",
    "de": "german",
    "en": "english",
    "es": "spanish",
    "fi": "finnish",
    "fr": "french",
    "hu": "hungarian",
    "it": "italian",
    "nl": "dutch",
    "no": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sv": "swedish",
    "tr": "turkish",
}
_WORD = re.compile(r"\w+", re.UNICODE)
MAX_TERMS = 32


# pg_config() in SQL, for a passage's own language (built from PG_CONFIGS, no input).
_PG_ROW_CONFIG = (
    "CAST(CASE lower(split_part(p.language, '-', 1)) "
    + " ".join(f"WHEN '{code}' THEN '{name}'" for code, name in PG_CONFIGS.items())
    + " ELSE 'simple' END AS regconfig)"
)


def pg_config(language: str) -> str:
    """The Postgres text-search configuration for a language code (``en-GB`` → english)."""
    return PG_CONFIGS.get(language.split("-")[0].lower(), "simple")


def terms(question: str) -> list[str]:
    """The question's distinct words, in order, at most MAX_TERMS."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(question.lower()):
        if len(word) > 1 and word not in seen and not word.isdigit():
            seen[word] = None
    return list(seen)[:MAX_TERMS]


async def index_passages(
    conn: AsyncConnection, dialect: str, rows: Sequence[dict[str, object]]
) -> None:
    """Make freshly inserted ``document_passages`` rows searchable."""
    if not rows:
        return
    if dialect == "postgresql":
        await conn.execute(
            text(
                "UPDATE document_passages SET search = "
                "to_tsvector(CAST(:config AS regconfig), coalesce(heading, '') || ' ' || text) "
                "WHERE id = :id"
            ),
            [{"config": pg_config(str(r["language"])), "id": r["id"]} for r in rows],
        )
    else:
        await conn.execute(
            text(
                "INSERT INTO document_passages_fts (passage_id, game_id, language, text) "
                "VALUES (:id, :game_id, :language, :body)"
            ),
            [
                {
                    "id": r["id"],
                    "game_id": r["game_id"],
                    "language": r["language"],
                    "body": f"{r.get('heading') or ''}\n{r['text']}",
                }
                for r in rows
            ],
        )


async def delete_document(conn: AsyncConnection, dialect: str, passage_ids: list[str]) -> None:
    """Forget the index entries of passages about to be deleted (SQLite only needs it)."""
    if dialect != "postgresql" and passage_ids:
        await conn.execute(
            text("DELETE FROM document_passages_fts WHERE passage_id = :id"),
            [{"id": pid} for pid in passage_ids],
        )


# What a search returns of each passage (``p``) and its document (``d``).
_PASSAGE_COLUMNS = (
    "p.id, p.document_id, p.language, p.ordinal, p.heading, p.text, p.kind, p.page, d.title"
)


# The tie-break at equal relevance (issue 19, separate from the ranking itself): errata,
# then FAQs, then everything else (the rulebook, expansions).
_KIND_TIE_BREAK = "CASE p.kind WHEN 'errata' THEN 0 WHEN 'faq' THEN 1 ELSE 2 END"


def _pg_search(lang_clause: str, config: str) -> str:
    """The Postgres search (asyncpg parameters: game, query, limit, [language, config])."""
    return (
        f"SELECT {_PASSAGE_COLUMNS} FROM document_passages AS p "
        "JOIN game_documents AS d ON d.id = p.document_id, "
        f"to_tsquery({config}, $2) AS q "
        f"WHERE p.game_id = $1 {lang_clause} AND p.search @@ q "
        f"ORDER BY ts_rank(p.search, q) DESC, {_KIND_TIE_BREAK}, p.ordinal LIMIT $3"
    )


_PG_SEARCH_ONE = _pg_search("AND p.language = $4", "CAST($5 AS regconfig)")
# Every language of the game, each question parsed with its passage's configuration:
# the index holds French stems for French passages.
_PG_SEARCH_ALL = _pg_search("", _PG_ROW_CONFIG)


@cache
def _sqlite_search(one_language: bool) -> TextClause:
    """The SQLite search, made once per kind (its parameters come at execution)."""
    lang_clause = "AND f.language = :language" if one_language else ""
    return text(
        f"SELECT {_PASSAGE_COLUMNS} FROM document_passages_fts AS f "
        "JOIN document_passages AS p ON p.id = f.passage_id "
        "JOIN game_documents AS d ON d.id = p.document_id "
        f"WHERE document_passages_fts MATCH :query AND f.game_id = :game_id "
        f"{lang_clause} ORDER BY bm25(document_passages_fts), {_KIND_TIE_BREAK}, p.ordinal "
        "LIMIT :limit"
    )


async def search_passages(
    db: Database, *, game_id: str, language: str | None, question: str, limit: int
) -> Sequence[Mapping[Any, Any]]:
    """The best-matching passages of a game (in ``language`` when given), best first,
    with their document's title (the ``_PASSAGE_COLUMNS``): one statement, which on
    Postgres goes straight to the driver (every turn runs it before its first token)."""
    words = terms(question)
    if not words:
        return []
    if db.is_postgres:
        query = " | ".join(words)
        async with db.driver() as driver:
            if language:
                return await driver.fetch(
                    _PG_SEARCH_ONE, game_id, query, limit, language, pg_config(language)
                )
            return await driver.fetch(_PG_SEARCH_ALL, game_id, query, limit)
    params: dict[str, Any] = {
        "game_id": game_id,
        "query": " OR ".join(f'"{w}"' for w in words),
        "limit": limit,
    }
    if language:
        params["language"] = language
    async with db.read() as conn:
        result = await conn.execute(_sqlite_search(bool(language)), params)
        return result.mappings().all()
