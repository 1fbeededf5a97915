"""The retrieval evaluation (issue #24) on SQLite and Postgres: the answering passage
reaches the model, errata come above the rules they correct, and silent rules are known."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat_server.config import Settings
from chat_server.storage import Database

from .conftest import WAIT
from .evaluation import evaluate

LIMIT = int(Settings.model_fields["grounding_passages"].default)  # GROUNDING_PASSAGES


async def test_answering_passage_reaches_the_model(
    db: Database, with_glossary: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """With the game's glossary: at least 90% of answerable questions get their passage,
    at most 6 passages sent on average, every errata question gets its correction above
    the rule, and 7 of the 8 questions the rules do not answer are known to be silent
    while at most 2 answerable ones are."""
    async with asyncio.timeout(WAIT):
        figures = await evaluate(db, with_glossary["id"], LIMIT)
    with capsys.disabled():  # the figures are shown on every run, not only on failure
        print(f"\n[{db.dialect}] hybrid + glossary: {figures.report()}")
        for miss in figures.misses:
            print(f"  missed: {miss}")
    assert figures.answerable >= 50 and figures.unanswerable >= 5
    assert figures.recall >= 0.90
    assert figures.mean_sent <= 6.0
    assert figures.errata_first == figures.errata
    assert figures.silent >= 7  # of 8; see docs/providers.md for the one that is not
    assert figures.wrongly_silent <= 2


@pytest.mark.xfail(
    strict=True,
    reason="issue 24's target, not met: 'is there a time limit on how long a turn can "
    "take' is made of the game's own words and passes the floor; no signal measured "
    "separates it without silencing answerable questions, and no cross-encoder ships "
    "in a registry package (blocked; docs/providers.md)",
)
async def test_every_question_the_rules_do_not_answer_is_known_silent(
    db: Database, with_glossary: dict[str, Any]
) -> None:
    """The issue's target: for every question the rules do not answer, nothing clears the
    floor (expected to fail until it holds; strict, so meeting it fails this marker)."""
    async with asyncio.timeout(WAIT):
        figures = await evaluate(db, with_glossary["id"], LIMIT)
    assert figures.silent == figures.unanswerable == 8


async def test_without_a_glossary_figures_are_reported(
    db: Database, hollowdeep: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a glossary the fusion of full text and meaning still finds most rules
    (the figure docs/providers.md gives) and keeps errata above their rules."""
    async with asyncio.timeout(WAIT):
        figures = await evaluate(db, hollowdeep["id"], LIMIT)
    with capsys.disabled():
        print(f"\n[{db.dialect}] hybrid, no glossary: {figures.report()}")
    assert figures.recall >= 0.55
    assert figures.mean_sent <= 6.0
    assert figures.errata_first >= figures.errata - 1


async def test_held_out_questions(
    db: Database, with_glossary: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """On questions written after the ranking was fixed (run once as written: 95% SQLite,
    90% Postgres), the answering passage still reaches the model for most, errata
    still come first, and at least 3 of the 5 silent rules are known (run once after
    the unknown-word test was fixed on the main set)."""
    async with asyncio.timeout(WAIT):
        figures = await evaluate(db, with_glossary["id"], LIMIT, "holdout.json")
    with capsys.disabled():
        print(f"\n[{db.dialect}] held-out, hybrid + glossary: {figures.report()}")
    assert figures.recall >= 0.85
    assert figures.mean_sent <= 6.0
    assert figures.errata_first == figures.errata == 2
    assert figures.silent >= 3 and figures.wrongly_silent <= 1
