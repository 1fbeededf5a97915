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
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "PG_SEARCH_COLUMN",
    "PG_SEARCH_INDEX",
    "SQLITE_FTS_TABLE",
    "delete_document",
    "index_passages",
    "pg_config",
    "search_passage_ids",
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


# pg_config() in SQL, for a row's own ``language`` (built from PG_CONFIGS, no input).
_PG_ROW_CONFIG = (
    "CAST(CASE lower(split_part(language, '-', 1)) "
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


async def search_passage_ids(
    conn: AsyncConnection,
    dialect: str,
    *,
    game_id: str,
    language: str | None,
    question: str,
    limit: int,
) -> list[str]:
    """Ids of the best-matching passages of a game (in ``language`` when given)."""
    words = terms(question)
    if not words:
        return []
    if dialect == "postgresql":
        if language:
            lang_clause, config = "AND language = :language", "CAST(:config AS regconfig)"
        else:
            # Every language of the game, each question parsed with its passage's
            # configuration: the index holds French stems for French passages.
            lang_clause, config = "", _PG_ROW_CONFIG
        result = await conn.execute(
            text(
                "SELECT id FROM document_passages, "
                f"to_tsquery({config}, :query) AS q "
                f"WHERE game_id = :game_id {lang_clause} AND search @@ q "
                "ORDER BY ts_rank(search, q) DESC, ordinal LIMIT :limit"
            ),
            {
                "config": pg_config(language or "simple"),
                "query": " | ".join(words),
                "game_id": game_id,
                "language": language,
                "limit": limit,
            },
        )
    else:
        lang_clause = "AND language = :language" if language else ""
        result = await conn.execute(
            text(
                "SELECT passage_id FROM document_passages_fts "
                f"WHERE document_passages_fts MATCH :query AND game_id = :game_id {lang_clause} "
                "ORDER BY bm25(document_passages_fts) LIMIT :limit"
            ),
            {
                "query": " OR ".join(f'"{w}"' for w in words),
                "game_id": game_id,
                "language": language,
                "limit": limit,
            },
        )
    return [row[0] for row in result]
