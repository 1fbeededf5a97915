"""The retrieval evaluation: the Hollowdeep rulebook, errata and FAQ, and the questions.

``load`` stores the three documents for a game; ``evaluate`` asks every question
through ``retrieve`` (what a turn sends the model) and counts what the issue measures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chat_server.retrieval.index import Indexes
from chat_server.storage import Database
from chat_server.storage.documents import add_document, retrieve

EVAL = Path(__file__).parent / "eval"
DOCUMENTS = (("rulebook.md", "rulebook"), ("errata.md", "errata"), ("faq.md", "faq"))


def glossary() -> dict[str, list[str]]:
    """The glossary an admin keeps for the game (written after the questions)."""
    return dict(json.loads((EVAL / "glossary.json").read_text("utf-8"))["glossary"])


def questions(name: str = "questions.json") -> list[dict[str, Any]]:
    """The questions as written, each with the heading that answers it (or None);
    ``holdout.json``: the set written after the ranking was fixed."""
    return list(json.loads((EVAL / name).read_text("utf-8"))["questions"])


async def load(db: Database, game_id: str) -> None:
    """Store the rulebook, the errata and the FAQ for ``game_id``."""
    for name, kind in DOCUMENTS:
        await add_document(
            db,
            game_id=game_id,
            language="en",
            title=f"Hollowdeep {kind}",
            content=(EVAL / name).read_text("utf-8"),
            fmt="markdown",
            kind=kind,
        )


@dataclass
class Figures:
    answerable: int = 0
    found: int = 0
    sent: int = 0
    errata: int = 0
    errata_first: int = 0
    unanswerable: int = 0
    silent: int = 0
    wrongly_silent: int = 0
    misses: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.found / self.answerable

    @property
    def mean_sent(self) -> float:
        return self.sent / self.answerable

    def report(self) -> str:
        return (
            f"recall {self.found}/{self.answerable} ({self.recall:.0%}), "
            f"passages sent {self.mean_sent:.2f} on average, "
            f"errata above the rule {self.errata_first}/{self.errata}, "
            f"silent rules known {self.silent}/{self.unanswerable} "
            f"(answerable ones wrongly silent: {self.wrongly_silent})"
        )


async def evaluate(db: Database, game_id: str, limit: int, name: str = "questions.json") -> Figures:
    """Every question of the set ``name`` through ``retrieve``, as a turn asks it."""
    figures = Figures()
    indexes = Indexes()  # an app's, made for this evaluation
    for q in questions(name):
        found = await retrieve(
            db, game_id=game_id, language="en", question=q["q"], limit=limit, indexes=indexes
        )
        heads = [p.heading for p in found.passages]
        if q["answer"] is None:
            figures.unanswerable += 1
            figures.silent += found.silent and not found.passages
            continue
        figures.answerable += 1
        figures.sent += len(heads)
        figures.wrongly_silent += found.silent
        if q["answer"] in heads:
            figures.found += 1
        else:
            figures.misses.append(f"{q['q']!r} -> {q['answer']!r}, sent {heads}")
        if q["kind"] == "errata":
            figures.errata += 1
            fix = heads.index(q["answer"]) if q["answer"] in heads else None
            rule = heads.index(q["overrides"]) if q["overrides"] in heads else len(heads)
            figures.errata_first += fix is not None and fix < rule
    return figures
