"""Each game's passages in memory, with their vectors, words and corrections.

An index is built from the database when a game is first asked about and rebuilt
when its documents or its glossary change: every ``CHECK_EVERY`` seconds a turn reads
the game's signature (passage count, newest passage id, latest document change,
glossary) in one small statement, and a changed signature rebuilds the index (the
passages' vectors are computed in a thread: about 0.2 s for a 100-page rulebook).
Nothing has to be called when a document is added, replaced or deleted: the next
check sees it, on every instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select

from ..storage.engine import Database
from ..storage.schema import document_passages, game_documents, games
from .embedder import Vectors, embed_in_thread
from .ranking import Glossary, Needles, content_words, idf, needles, parse_glossary

__all__ = ["CHECK_EVERY", "GameIndex", "Indexes", "build_index"]

log = logging.getLogger(__name__)

CHECK_EVERY = 5.0  # seconds between two checks of a game's signature
MAX_GAMES = 256  # indexes kept in memory (least recently used go first)
CORRECTS_MIN_COSINE = 0.6  # an errata naming no rule's heading corrects its closest rule
RULE_KINDS = ("rulebook", "expansion")


@dataclass(slots=True)
class GameIndex:
    """One game's passages, as searched: rows, unit vectors, words, corrections."""

    signature: tuple[Any, ...]
    rows: list[Mapping[str, Any]]
    vectors: Vectors | None  # None: the model could not be used (full text alone)
    words: list[frozenset[str]]
    weights: dict[str, float]  # a word's IDF over the game's passages, 1.0 for the rarest
    corrects: dict[str, list[str]]  # a rule passage's id → the errata ids correcting it
    glossary: Needles
    known: frozenset[str]  # content words of the passages and of the glossary's player words
    position: dict[str, int] = field(default_factory=dict)
    checked_at: float = 0.0

    def __post_init__(self) -> None:
        self.position = {str(r["id"]): i for i, r in enumerate(self.rows)}


def _text(row: Mapping[str, Any]) -> str:
    return f"{row['heading'] or ''}\n{row['text']}"


def corrections(rows: list[Mapping[str, Any]], vectors: Vectors) -> dict[str, list[str]]:
    """Which errata passage corrects which rule passage.

    An errata passage corrects the rule whose heading its text names first ("Correction
    to Lamp Oil: …"); naming none, the rule of its language whose vector is closest, if
    close enough.
    """
    out: dict[str, list[str]] = {}
    rules = [i for i, r in enumerate(rows) if r["kind"] in RULE_KINDS]
    for e, row in enumerate(rows):
        if row["kind"] != "errata":
            continue
        same = [i for i in rules if rows[i]["language"] == row["language"]]
        if not same:
            continue
        body = str(row["text"]).lower()
        named = [
            (body.find(str(rows[i]["heading"]).lower()), -len(str(rows[i]["heading"])), i)
            for i in same
            if rows[i]["heading"] and str(rows[i]["heading"]).lower() in body
        ]
        cos = vectors[same] @ vectors[e]
        if named:
            first = min(named)[:2]
            pick = max(
                (i for pos, neg, i in named if (pos, neg) == first),
                key=lambda i: float(vectors[i] @ vectors[e]),
            )
        elif float(cos.max()) >= CORRECTS_MIN_COSINE:
            pick = same[int(cos.argmax())]
        else:
            continue
        out.setdefault(str(rows[pick]["id"]), []).append(str(row["id"]))
    return out


async def build_index(
    rows: list[Mapping[str, Any]], glossary: Glossary, signature: tuple[Any, ...]
) -> GameIndex:
    """An index of ``rows`` (passages with their document's title); vectors in a thread."""
    vectors: Vectors | None
    try:
        vectors = await embed_in_thread([_text(r) for r in rows])
    except Exception:  # a broken model install must not stop grounding: full text goes on
        log.exception("embedding a game's passages failed: searching its full text alone")
        vectors = None
    words = [frozenset(content_words(_text(r))) for r in rows]
    frequency: dict[str, int] = {}
    for ws in words:
        for w in ws:
            frequency[w] = frequency.get(w, 0) + 1
    rarest = idf(1, len(rows)) or 1.0
    weights = {w: idf(n, len(rows)) / rarest for w, n in frequency.items()}
    return GameIndex(
        signature=signature,
        rows=rows,
        vectors=vectors,
        words=words,
        weights=weights,
        corrects=corrections(rows, vectors) if vectors is not None else {},
        glossary=needles(glossary),
        known=frozenset(weights).union(
            w for words in glossary.values() for phrase in words for w in content_words(phrase)
        ),
    )


# Errata, then FAQs, then the rest: a stable sort by score keeps this order among equals,
# so at equal relevance errata and FAQs outrank the rulebook (as the full-text side does).
_KIND_ORDER = case(
    (document_passages.c.kind == "errata", 0), (document_passages.c.kind == "faq", 1), else_=2
)
_PASSAGES = (
    select(document_passages, game_documents.c.title)
    .join(game_documents, game_documents.c.id == document_passages.c.document_id)
    .order_by(_KIND_ORDER, document_passages.c.document_id, document_passages.c.ordinal)
)


def _signature_query(game_id: str) -> Any:
    """The game's passage count, newest passage id, latest document change and details:
    a document added, deleted or replaced (even in place) changes one of them."""
    mine = document_passages.c.game_id == game_id
    count = select(func.count()).select_from(document_passages).where(mine).scalar_subquery()
    newest = select(func.max(document_passages.c.id)).where(mine).scalar_subquery()
    changed = (
        select(func.max(func.coalesce(game_documents.c.updated_at, game_documents.c.created_at)))
        .where(game_documents.c.game_id == game_id)
        .scalar_subquery()
    )
    return select(count, newest, changed, games.c.details).where(games.c.id == game_id)


class Indexes:
    """The indexes of the games this instance has been asked about (LRU, bounded)."""

    def __init__(self, *, check_every: float = CHECK_EVERY, max_games: int = MAX_GAMES) -> None:
        self._check_every = check_every
        self._max_games = max_games
        self._indexes: dict[str, GameIndex] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def forget(self, game_id: str) -> None:
        """The game's documents changed: check its signature again at its next turn.

        Called on the backplane's ``documents`` signal, so that a deleted document stops
        grounding at once on every instance rather than after ``check_every``.
        """
        index = self._indexes.get(game_id)
        if index is not None:
            index.checked_at = float("-inf")

    async def get(self, db: Database, game_id: str) -> GameIndex:
        """The game's index, checked against the database at most every few seconds."""
        index = self._indexes.get(game_id)
        now = time.monotonic()
        if index is not None and now - index.checked_at < self._check_every:
            self._indexes[game_id] = self._indexes.pop(game_id)  # most recently used
            return index
        lock = self._locks.setdefault(game_id, asyncio.Lock())
        async with lock:
            index = self._indexes.get(game_id)
            if index is not None and time.monotonic() - index.checked_at < self._check_every:
                return index
            async with db.read() as conn:
                row = (await conn.execute(_signature_query(game_id))).first()
            count, newest, changed, details = row if row is not None else (0, None, None, None)
            raw = details.get("glossary") if isinstance(details, Mapping) else None
            glossary = parse_glossary(raw)
            signature = (count, newest, str(changed), tuple(sorted(glossary.items())))
            if index is None or index.signature != signature:
                async with db.read() as conn:
                    query = _PASSAGES.where(document_passages.c.game_id == game_id)
                    rows: list[Mapping[str, Any]] = [
                        dict(r) for r in (await conn.execute(query)).mappings().all()
                    ]
                index = await build_index(rows, glossary, signature)
            index.checked_at = time.monotonic()
            self._indexes.pop(game_id, None)
            self._indexes[game_id] = index
            while len(self._indexes) > self._max_games:
                oldest = next(iter(self._indexes))
                del self._indexes[oldest]
                self._locks.pop(oldest, None)
            return index
