"""One question against one game's index: full-text and vector rankings, fused, floored.

The database's full-text search (``storage/fulltext.py``) ranks the question with its
glossary words added; the question's vector ranks every passage of the language by
cosine; reciprocal rank fusion merges the two; passages under the relevance floor are
dropped; corrections are put above the rules they correct. When no passage clears the
floor, or when the question's meaning rests on words the game never uses (for a game
with a glossary: the question's vector and that of its remainder without those words
have a cosine under ``MIN_KNOWN``), the rules are silent on the question.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..storage.engine import Database
from ..storage.fulltext import search_passages
from .embedder import Vectors, embed
from .index import GameIndex
from .ranking import (
    Evidence,
    content_words,
    expand,
    fuse,
    known_part,
    relevant,
    with_corrections,
)

__all__ = ["MIN_COSINE", "MIN_KNOWN", "MIN_WEIGHT", "POOL", "Ranked", "rank"]

POOL = 20  # candidates taken from each ranking before fusion
MIN_WEIGHT = 0.72  # the floor: summed weight of shared words (1.0: a word of one passage) …
MIN_COSINE = 0.4  # … or a vector this close (cosine); see docs/providers.md for the figures
MIN_KNOWN = 0.73  # the question's cosine with itself less the words the game never uses


def _embed_into(result: asyncio.Future[Vectors], texts: list[str]) -> None:
    if result.done():  # cancelled: the search failed first
        return
    try:
        result.set_result(embed(texts))
    except Exception as exc:  # handed to the turn that awaits it
        result.set_exception(exc)


@dataclass(frozen=True, slots=True)
class Ranked:
    """The passages to send, best first, and whether the rules are silent."""

    rows: list[Mapping[str, Any]]
    silent: bool


def evidence(index: GameIndex, position: int, words: list[str], cosine: float) -> Evidence:
    """What ties the passage at ``position`` to a question of ``words``."""
    shared = index.words[position]
    weight = sum(index.weights.get(w, 0.0) for w in words if w in shared)
    return Evidence(shared_weight=weight, cosine=cosine)


async def rank(
    db: Database,
    index: GameIndex,
    *,
    game_id: str,
    language: str | None,
    question: str,
    limit: int,
) -> Ranked:
    """The passages that answer ``question`` in ``language`` (None: every language)."""
    expanded = expand(question, index.glossary)
    question_vector = np.zeros(0, dtype=np.float32)
    known: str | None = None
    embedded: asyncio.Future[Vectors] | None = None
    if index.rows and index.vectors is not None:
        # Only a game with a glossary knows its players' words: without one, a player's
        # own word is unknown for want of a glossary, not because the rules are silent.
        known = known_part(question, index.known) if index.glossary else None
        texts = [expanded] if known is None else [expanded, question, known]
        # Embedded while the search is under way: the query goes out first, then the
        # loop runs this callback while the database works (no task, no thread).
        embedded = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(_embed_into, embedded, texts)
    try:
        found = await search_passages(
            db, game_id=game_id, language=language, question=expanded, limit=POOL
        )
    except BaseException:
        if embedded is not None:
            embedded.cancel()  # the search failed (the callback then does nothing)
        raise
    if embedded is not None:
        vectors = await embedded
        if known is not None and float(vectors[1] @ vectors[2]) < MIN_KNOWN:
            return Ranked([], silent=True)  # the question rests on what the game never names
        question_vector = vectors[0]
    by_text = [str(r["id"]) for r in found]
    cosines = np.zeros(len(index.rows), dtype=np.float32)
    by_vector: list[str] = []
    if index.rows and index.vectors is not None:
        cosines = index.vectors @ question_vector
        order = [
            i
            for i in np.argsort(-cosines, kind="stable")
            if language is None or index.rows[i]["language"] == language
        ]
        by_vector = [str(index.rows[i]["id"]) for i in order[:POOL]]
    fused = [key for key in fuse([by_text, by_vector]) if key in index.position]
    words = content_words(expanded)
    clears = (
        relevant(
            evidence(index, index.position[key], words, float(cosines[index.position[key]])),
            min_weight=MIN_WEIGHT,
            min_cosine=MIN_COSINE,
        )
        for key in fused
    )
    if not any(clears):  # also when nothing was found at all
        return Ranked([], silent=True)
    chosen = with_corrections(fused, index.corrects, limit)
    return Ranked([index.rows[index.position[key]] for key in chosen], silent=False)
