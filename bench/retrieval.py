"""Retrieval strategies compared on the evaluation set of issue #24, and their cost.

    .venv/bin/python bench/retrieval.py                  # SQLite (a temporary file)
    .venv/bin/python bench/retrieval.py --database-url postgresql://127.0.0.1/test_x

For each strategy and number of passages sent: recall (the answering passage is
sent), passages sent on average, errata ranked above the rule they correct, and
unanswerable questions known to be silent. Then the signals measured for knowing
the rules are silent on the questions the kept strategy still answers, and what each
would cost. Then the costs: embedding a question, ``retrieve()`` per question, and
indexing a 100-page rulebook. The figures are in
docs/providers.md (grounding) and docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from chat_server.retrieval.embedder import embed, load_model
from chat_server.retrieval.index import GameIndex, Indexes, build_index
from chat_server.retrieval.ranking import _WORD, content_words, expand, fuse, stem, with_corrections
from chat_server.retrieval.search import MIN_COSINE, MIN_WEIGHT, POOL, evidence, rank
from chat_server.storage import Database
from chat_server.storage.documents import retrieve
from chat_server.storage.fulltext import search_passages
from chat_server.storage.games import create_game, update_game
from chat_server.storage.migrate import upgrade
from tests.retrieval.evaluation import EVAL, glossary, load, questions

Ranker = Callable[[Database, GameIndex, str, str, int], Awaitable[tuple[list[str], bool]]]
PROMPT_BUDGET_TOKENS = 8000  # a rulebook in the prompt: what a turn could afford


def heading(index: GameIndex, key: str) -> str:
    return str(index.rows[index.position[key]]["heading"])


async def by_text(db: Database, index: GameIndex, game: str, q: str, k: int) -> list[str]:
    rows = await search_passages(db, game_id=game, language="en", question=q, limit=POOL)
    return [str(r["id"]) for r in rows][:k]


def by_vector(index: GameIndex, q: str, k: int) -> list[str]:
    assert index.vectors is not None, "the embedding model did not load"
    cos = index.vectors @ embed([q])[0]
    return [str(index.rows[i]["id"]) for i in np.argsort(-cos)[:k]]


async def fts_only(db: Database, index: GameIndex, game: str, q: str, k: int) -> Any:
    found = await by_text(db, index, game, q, k)
    return found, not found


async def vectors_only(db: Database, index: GameIndex, game: str, q: str, k: int) -> Any:
    return by_vector(index, q, k), False


async def hybrid(db: Database, index: GameIndex, game: str, q: str, k: int) -> Any:
    text = await by_text(db, index, game, q, POOL)
    fused = fuse([text, by_vector(index, q, POOL)])
    return with_corrections(fused, index.corrects, k), False


async def hybrid_glossary(db: Database, index: GameIndex, game: str, q: str, k: int) -> Any:
    return await hybrid(db, index, game, expand(q, index.glossary), k)


async def product(db: Database, index: GameIndex, game: str, q: str, k: int) -> Any:
    ranked = await rank(db, index, game_id=game, language="en", question=q, limit=k)
    return [str(r["id"]) for r in ranked.rows], ranked.silent


async def whole_rulebook(db: Database, index: GameIndex, game: str, q: str, k: int) -> Any:
    tokens = sum(len(str(r["text"])) for r in index.rows) // 4
    if tokens > PROMPT_BUDGET_TOKENS:
        return [], False
    return [str(r["id"]) for r in index.rows], False


STRATEGIES: Mapping[str, Ranker] = {
    "full-text alone (before)": fts_only,
    "embeddings alone": vectors_only,
    "hybrid (RRF)": hybrid,
    "hybrid + glossary": hybrid_glossary,
    "hybrid + glossary + floor (kept)": product,
    "whole rulebook in the prompt": whole_rulebook,
}


async def measure(db: Database, index: GameIndex, game: str, ranker: Ranker, k: int) -> str:
    found = sent = answerable = errata = first = silent = unanswerable = 0
    for q in questions():
        keys, is_silent = await ranker(db, index, game, q["q"], k)
        heads = [heading(index, key) for key in keys]
        if q["answer"] is None:
            unanswerable += 1
            silent += is_silent and not keys
            continue
        answerable += 1
        sent += len(heads)
        found += q["answer"] in heads
        if q["kind"] == "errata":
            errata += 1
            rule = heads.index(q["overrides"]) if q["overrides"] in heads else len(heads)
            first += q["answer"] in heads and heads.index(q["answer"]) < rule
    return (
        f"{found}/{answerable} ({found / answerable:.0%}) | {sent / answerable:.2f} | "
        f"{first}/{errata} | {silent}/{unanswerable}"
    )


def word_forms(index: GameIndex, question: str) -> dict[str, set[str]]:
    """Each content word of ``question`` with the words that stand for it in the rules:
    itself, and the game's terms for it when it is a glossary word."""
    forms = {w: {w} for w in content_words(question)}
    words = _WORD.findall(question.lower())
    lowered, stems = f" {' '.join(words)} ", f" {' '.join(map(stem, words))} "
    for term, needles in index.glossary:
        for needle in needles:
            if needle in lowered or needle in stems:
                for w in content_words(needle):
                    if w in forms:
                        forms[w] |= set(content_words(term))
    return forms


async def signals(db: Database, index: GameIndex, game: str, q: str) -> dict[str, float]:
    """The silence signals of one question (higher: more likely answered)."""
    expanded = expand(q, index.glossary)
    found = await search_passages(db, game_id=game, language="en", question=expanded, limit=POOL)
    by_text = [str(r["id"]) for r in found]
    assert index.vectors is not None, "the embedding model did not load"
    cos = index.vectors @ embed([expanded])[0]
    by_vec = [str(index.rows[i]["id"]) for i in np.argsort(-cos, kind="stable")[:POOL]]
    top = [index.position[k] for k in fuse([by_text, by_vec]) if k in index.position][:6]
    words = content_words(expanded)
    clearing = [
        i
        for i in top
        if (e := evidence(index, i, words, float(cos[i]))).shared_weight >= MIN_WEIGHT
        or e.cosine >= MIN_COSINE
    ]
    forms = word_forms(index, q)
    known = {w: f for w, f in forms.items() if f & index.weights.keys()}
    rank_of = {k: n for n, k in enumerate(by_text)}
    agree = [
        max(rank_of.get(str(index.rows[i]["id"]), POOL), by_vec.index(str(index.rows[i]["id"])))
        for i in clearing
        if str(index.rows[i]["id"]) in by_vec
    ]
    return {
        "best cosine with a passage": float(cos.max()),
        "z-score of the best cosine": float((cos.max() - cos.mean()) / cos.std()),
        "share of its known words the best candidate covers": max(
            (sum(bool(f & index.words[i]) for f in known.values()) / len(known) for i in top),
            default=0.0,
        )
        if known
        else 0.0,
        "both rankings agree (minus the best candidate's worse rank)": -float(
            min(agree, default=POOL)
        ),
    }


async def silence(db: Database, index: GameIndex, game: str) -> None:
    """What catching every unanswerable question with each signal would cost: the
    answerable questions answered today that score no better than the best-scoring
    unanswerable one still answered."""
    rows = []
    for q in questions():
        ranked = await rank(db, index, game_id=game, language="en", question=q["q"], limit=6)
        heads = [r["heading"] for r in ranked.rows]
        rows.append(
            (q, ranked.silent, q["answer"] in heads, await signals(db, index, game, q["q"]))
        )
    print("signal | the unanswerable ones still answered | answerable ones it would silence")
    for name in rows[0][3]:
        missed = [v[name] for q, silent, _, v in rows if q["answer"] is None and not silent]
        if not missed:
            continue
        bar = max(missed)
        lost = sum(1 for q, silent, hit, v in rows if q["answer"] and hit and v[name] <= bar)
        print(f"{name} | {', '.join(f'{m:.2f}' for m in missed)} | {lost}")


def hundred_pages() -> list[dict[str, Any]]:
    """About 100 pages of rules: the rulebook's passages nine times over (315 passages)."""
    text = (EVAL / "rulebook.md").read_text("utf-8")
    from chat_server.rulebooks import split_passages

    rows: list[dict[str, Any]] = []
    for copy in range(9):
        for i, p in enumerate(split_passages(text, "markdown")):
            rows.append(
                {
                    "id": f"{copy:02d}{i:04d}",
                    "heading": f"{p.heading} ({copy})",
                    "text": p.text,
                    "kind": "rulebook",
                    "language": "en",
                }
            )
    return rows


async def costs(db: Database, game: str, indexes: Indexes) -> None:
    load_model()
    qs = [q["q"] for q in questions()]
    embed(qs[:1])
    rounds = []
    for _ in range(20):
        start = time.perf_counter()
        for q in qs:
            embed([q])
        rounds.append((time.perf_counter() - start) / len(qs))
    print(f"embedding a question: {statistics.median(rounds) * 1e6:.0f} µs (median of 20 rounds)")
    for label, fn in (
        ("full-text search alone (before)", None),
        ("retrieve() (kept strategy)", retrieve),
    ):
        times = []
        for _ in range(3):
            for q in qs:
                start = time.perf_counter()
                if fn is None:
                    await search_passages(db, game_id=game, language="en", question=q, limit=6)
                else:
                    await fn(
                        db,
                        game_id=game,
                        language="en",
                        question=q,
                        limit=6,
                        indexes=indexes,
                        languages={"en"},
                    )
                times.append(time.perf_counter() - start)
        times.sort()
        p50, p95 = times[len(times) // 2], times[int(len(times) * 0.95)]
        print(f"{label}: p50 {p50 * 1000:.2f} ms, p95 {p95 * 1000:.2f} ms per question")
    rows = hundred_pages()
    start = time.perf_counter()
    await build_index(rows, {}, ("bench",))
    chars = sum(len(r["text"]) for r in rows)
    print(
        f"indexing {len(rows)} passages ({chars // 1000} k characters, about 100 pages): "
        f"{time.perf_counter() - start:.2f} s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    db = Database(url, pool_size=4)
    indexes = Indexes()
    try:
        await upgrade(db)
        plain = await create_game(db, {"name": "Hollowdeep"})
        with_glossary = await create_game(db, {"name": "Hollowdeep, glossary"})
        for game in (plain, with_glossary):
            await load(db, game["id"])
        await update_game(db, with_glossary["id"], {"details": {"glossary": glossary()}})
        print(f"database: {db.dialect}")
        print("strategy | sent at most | recall | passages sent | errata first | silent known")
        for name, ranker in STRATEGIES.items():
            game = with_glossary if "glossary" in name else plain
            index = await indexes.get(db, game["id"])
            for k in (4, 6):
                if name.startswith("whole") and k == 6:
                    continue
                shown = "all" if name.startswith("whole") else str(k)
                figures = await measure(db, index, game["id"], ranker, k)
                print(f"{name} | {shown} | {figures}")
        await silence(db, await indexes.get(db, with_glossary["id"]), with_glossary["id"])
        index = await indexes.get(db, plain["id"])
        chars = sum(len(str(r["text"])) for r in index.rows)
        print(f"the whole set in a prompt: about {chars // 4} tokens ({len(index.rows)} passages)")
        await costs(db, with_glossary["id"], indexes)
    finally:
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
