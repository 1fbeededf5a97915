"""Rulebooks: stored as passages and searched in the document's language, on both
databases (Postgres tsvector with the language's configuration, SQLite FTS5)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from chat_server.retrieval.index import Indexes
from chat_server.storage import Database
from chat_server.storage.documents import Retrieval, add_document, retrieve, serving_language
from chat_server.storage.games import create_game
from chat_server.storage.migrate import upgrade
from chat_server.storage.schema import document_passages

from .conftest import WAIT

CATAN_EN = """\
# Catan

Catan is a game of trading and building on an island, for three or four players.

## Setup

Lay out the hexes to form the island. Each player places two settlements and two roads.

## Production

At the start of a turn the active player throws both dice. Every hex whose number
was rolled produces resources for each settlement next to it.

## The robber

On a seven no hex produces. The active player moves the robber to another hex and
steals one resource card from a player with a settlement there.

## Trading

During a turn the active player may trade resource cards with the other players or
with the bank, four identical cards for one.
"""

CATAN_FR = """\
# Catan

Catan est un jeu de commerce et de construction sur une île.

## Production

Au début du tour, le joueur actif lance le dé rouge et le dé jaune. Chaque
hexagone désigné produit des ressources.

## Le voleur

Sur un sept, aucun hexagone ne produit. Le joueur actif déplace le voleur.
"""

HOSTILE = [
    '"',
    "'",
    '""',
    "*",
    "robber*",
    "NEAR(robber trade)",
    "robber NEAR trade",
    "robber OR trade",
    "OR",
    "AND NOT",
    "(robber",
    "robber)",
    "((()))",
    "robber & trade | !dice",
    "robber:*",
    "'); DROP TABLE document_passages; --",
    "1 OR 1=1",
    "-robber +trade ^col:text",
    "{text}: robber",
    "__ __init__",
    "x² ½ ⅓ ™",
    "\x00 robber",
    "émoji 🎲🎲",
    "a" * 5000,
    " ".join(f"word{i}" for i in range(200)),
]


async def ask(db: Database, game_id: str, question: str, language: str = "en") -> Retrieval:
    return await retrieve(
        db, game_id=game_id, language=language, question=question, limit=3, indexes=Indexes()
    )


def headings(found: Retrieval) -> list[str | None]:
    return [p.heading for p in found.passages]


async def stored_passages(db: Database, document_id: str) -> list[Any]:
    async with db.read() as conn:
        query = (
            select(document_passages)
            .where(document_passages.c.document_id == document_id)
            .order_by(document_passages.c.ordinal)
        )
        return list((await conn.execute(query)).all())


async def add(db: Database, game_id: str, content: str, language: str = "en") -> dict[str, Any]:
    return await add_document(
        db, game_id=game_id, language=language, title="Rules", content=content, fmt="markdown"
    )


async def test_markdown_is_split_at_headings(db: Database, game: dict[str, Any]) -> None:
    """Each Markdown section becomes one passage, in order, under its heading."""
    async with asyncio.timeout(WAIT):
        doc = await add(db, game["id"], CATAN_EN)
        rows = await stored_passages(db, doc["id"])
    assert doc["passages"] == len(rows) == 5
    assert [r.heading for r in rows] == ["Catan", "Setup", "Production", "The robber", "Trading"]
    assert [r.ordinal for r in rows] == [0, 1, 2, 3, 4]
    assert rows[2].text.startswith("At the start of a turn")
    assert "rolled produces" in rows[2].text  # lines of a paragraph are joined
    assert all(r.language == "en" and r.game_id == game["id"] for r in rows)


async def test_long_sections_and_plain_text_are_cut_to_size(
    db: Database, game: dict[str, Any]
) -> None:
    """A long section becomes several passages under its heading; plain text splits at
    blank lines and merges short paragraphs."""
    sentence = "Each player draws one card at the end of the turn. "
    long_section = "\n\n".join(sentence * 8 for _ in range(3))  # 3 paragraphs of ~400 chars
    async with asyncio.timeout(WAIT):
        md = await add(db, game["id"], f"## Cards ##\n\n{long_section}\n\n# End\n\nDone.\n")
        text_doc = await add_document(
            db,
            game_id=game["id"],
            language="en",
            title="Leaflet",
            content="First paragraph.\nStill first.\n\nSecond paragraph.\n\n# not a heading",
            fmt="text",
        )
        md_rows = await stored_passages(db, md["id"])
        text_rows = await stored_passages(db, text_doc["id"])
    assert [r.heading for r in md_rows] == ["Cards", "Cards", "End"]
    assert all(len(r.text) <= 900 for r in md_rows)
    assert "".join(r.text for r in md_rows[:2]).count("Each player draws") == 24
    assert [(r.heading, r.text) for r in text_rows] == [
        (None, "First paragraph. Still first.\nSecond paragraph.\n# not a heading")
    ]


async def test_the_answering_passage_comes_first(db: Database, game: dict[str, Any]) -> None:
    """A question finds the section that answers it, titled and numbered for citing."""
    async with asyncio.timeout(WAIT):
        doc = await add(db, game["id"], CATAN_EN)
        found = await ask(db, game["id"], "What does the robber do when someone throws a seven?")
    assert found.matched and found.has_documents
    assert headings(found)[0] == "The robber"
    first = found.passages[0]
    assert (first.id, first.document_id, first.title, first.ordinal) == (
        "p1",
        doc["id"],
        "Rules",
        3,
    )
    assert [p.id for p in found.passages] == [f"p{i + 1}" for i in range(len(found.passages))]
    assert len(found.passages) <= 3


async def test_english_words_match_their_stem(db: Database, game: dict[str, Any]) -> None:
    """'rolls' finds the passage that says 'rolled' (English stemming), on both databases."""
    async with asyncio.timeout(WAIT):
        await add(db, game["id"], CATAN_EN)
        found = await ask(db, game["id"], "Who rolls?")
        steals = await ask(db, game["id"], "stealing")
    assert found.matched
    assert headings(found)[0] == "Production"
    assert steals.matched
    assert headings(steals)[0] == "The robber"


async def test_accented_plural_finds_singular(db: Database, game: dict[str, Any]) -> None:
    """A French question with 'dés' finds the French passage that only says 'dé'."""
    async with asyncio.timeout(WAIT):
        await add(db, game["id"], CATAN_FR, language="fr")
        found = await ask(db, game["id"], "Combien de dés ?", language="fr")
    assert found.matched
    assert headings(found)[0] == "Production"
    assert all(p.language == "fr" for p in found.passages)


async def test_postgres_searches_french_with_the_french_configuration(postgres_url: str) -> None:
    """On Postgres, 'lancer' finds 'lance' in a French rulebook, not in the same text as English."""
    db = Database(postgres_url)
    try:
        async with asyncio.timeout(WAIT):
            await upgrade(db)
            french = await create_game(db, {"name": "Catan FR"})
            english = await create_game(db, {"name": "Catan EN"})
            await add(db, french["id"], CATAN_FR, language="fr")
            await add(db, english["id"], CATAN_FR, language="en")
            as_french = await ask(db, french["id"], "Qui doit lancer ?", language="fr")
            as_english = await ask(db, english["id"], "Qui doit lancer ?", language="en")
    finally:
        await db.dispose()
    # French stemming: lancer, lance -> lanc. English stemming leaves them apart.
    assert as_french.matched
    assert headings(as_french)[0] == "Production"
    assert all(p.language == "en" for p in as_english.passages)


async def test_french_only_game_answers_an_english_session(
    db: Database, game: dict[str, Any]
) -> None:
    """With only French rules, an English session is grounded on the French passages."""
    async with asyncio.timeout(WAIT):
        await add(db, game["id"], CATAN_FR, language="fr")
        found = await ask(db, game["id"], "Combien de dés ?", language="en")
        unmatched = await ask(db, game["id"], "How long is a game?", language="en")
    assert found.matched and found.has_documents
    assert headings(found)[0] == "Production"
    assert {p.language for p in found.passages} == {"fr"}
    assert unmatched.silent and unmatched.has_documents and not unmatched.passages


async def test_a_session_language_with_documents_gets_only_that_language(
    db: Database, game: dict[str, Any]
) -> None:
    """When the game has rules in the session's language, other languages are not used."""
    async with asyncio.timeout(WAIT):
        await add(db, game["id"], CATAN_FR, language="fr")
        await add(db, game["id"], CATAN_EN, language="en")
        english = await ask(db, game["id"], "robber voleur production", language="en")
        french = await ask(db, game["id"], "robber voleur production", language="fr")
    assert english.matched and {p.language for p in english.passages} == {"en"}
    assert french.matched and {p.language for p in french.passages} == {"fr"}
    assert "Le voleur" in headings(french)


async def test_other_games_rules_are_never_used(db: Database, game: dict[str, Any]) -> None:
    """Passages of another game never ground this game's answers."""
    async with asyncio.timeout(WAIT):
        other = await create_game(db, {"name": "Other"})
        await add(db, other["id"], "# Robber\n\nThe robber is everywhere in this game.\n")
        doc = await add(db, game["id"], CATAN_EN)
        found = await ask(db, game["id"], "robber everywhere")
        empty = await create_game(db, {"name": "Empty"})
        nothing = await ask(db, empty["id"], "robber")
    assert headings(found)[0] == "The robber"
    assert {p.document_id for p in found.passages} == {doc["id"]}
    assert nothing == Retrieval([], matched=False, has_documents=False)


async def test_a_game_without_documents(db: Database, game: dict[str, Any]) -> None:
    """A game with no rulebook says so: no passages, has_documents False."""
    async with asyncio.timeout(WAIT):
        found = await ask(db, game["id"], "How do I win?")
    assert found == Retrieval([], matched=False, has_documents=False)


async def test_no_matching_word_means_the_rules_are_silent(
    db: Database, game: dict[str, Any]
) -> None:
    """A question sharing nothing with the rules gets no passage: the rules are silent."""
    async with asyncio.timeout(WAIT):
        await add(db, game["id"], CATAN_EN)
        for question in ("xylophone zebra", "?!", "", "42"):
            found = await ask(db, game["id"], question)
            assert not found.matched and found.has_documents
            assert found.silent and found.passages == []


@pytest.mark.parametrize("question", HOSTILE, ids=range(len(HOSTILE)))
async def test_hostile_search_input_never_raises(
    db: Database, game: dict[str, Any], question: str
) -> None:
    """Search syntax, quotes and SQL in a question are just words: no error, rules intact."""
    async with asyncio.timeout(WAIT):
        await add(db, game["id"], CATAN_EN)
        found = await ask(db, game["id"], question)
        again = await ask(db, game["id"], "robber")
    assert found.has_documents
    assert len(found.passages) <= 3
    if "robber" in question.split() or question.startswith("robber"):
        assert found.matched and "The robber" in headings(found)
    assert headings(again)[0] == "The robber"


@pytest.mark.parametrize("session_language", ["en-GB", "EN", "en-us"])
async def test_a_regional_session_language_uses_its_base_language(
    db: Database, game: dict[str, Any], session_language: str
) -> None:
    """A session in 'en-GB' or 'EN' is grounded on the English rules only, not all languages."""
    async with asyncio.timeout(WAIT):
        await add(db, game["id"], CATAN_FR, language="fr")
        await add(db, game["id"], CATAN_EN, language="en")
        found = await ask(db, game["id"], "robber voleur", language=session_language)
    assert found.matched and headings(found)[0] == "The robber"
    assert {p.language for p in found.passages} == {"en"}


def test_serving_language() -> None:
    """The stored language for a session: exact, then base or variant, ignoring case."""
    assert serving_language("en", ["fr", "en"]) == "en"
    assert serving_language("EN", ["fr", "en"]) == "en"
    assert serving_language("en-GB", ["fr", "en", "en-US"]) == "en"
    assert serving_language("fr", ["fr-CA", "en"]) == "fr-CA"
    assert serving_language("pt-BR", ["pt-PT", "pt-BR"]) == "pt-BR"
    assert serving_language("de", ["fr", "en"]) is None
    assert serving_language("de", []) is None


async def test_a_document_kind_reaches_its_passages(db: Database, game: dict[str, Any]) -> None:
    """An errata document's passages are found as errata; a rulebook's as rulebook."""
    errata = "## Errata: the robber\n\nThe robber steals two resource cards, not one."
    async with asyncio.timeout(WAIT):
        await add(db, game["id"], CATAN_EN)
        doc = await add_document(
            db,
            game_id=game["id"],
            language="en",
            title="Errata",
            content=errata,
            fmt="markdown",
            kind="errata",
        )
        found = await ask(db, game["id"], "robber steals resource cards")
    assert doc["kind"] == "errata"
    kinds = {p.heading: p.kind for p in found.passages}
    assert kinds["Errata: the robber"] == "errata"
    assert kinds["The robber"] == "rulebook"
    assert all(p.page is None for p in found.passages)


async def test_errata_then_faq_outrank_the_rulebook_at_equal_relevance(
    db: Database, game: dict[str, Any]
) -> None:
    """The same words in a rulebook, a FAQ and errata: errata first, then the FAQ."""
    text = "A castle scores two points per tile when it is completed."
    async with asyncio.timeout(WAIT):
        for kind in ("rulebook", "faq", "errata", "expansion"):
            await add_document(
                db,
                game_id=game["id"],
                language="en",
                title=f"The {kind}",
                content=text,
                fmt="text",
                kind=kind,
            )
        found = await retrieve(
            db,
            game_id=game["id"],
            language="en",
            question="castle points",
            limit=4,
            indexes=Indexes(),
        )
    assert found.matched
    assert [p.kind for p in found.passages][:2] == ["errata", "faq"]
    assert {p.kind for p in found.passages[2:]} == {"rulebook", "expansion"}


async def test_deleted_and_replaced_documents_stop_matching(
    db: Database, game: dict[str, Any]
) -> None:
    """After replace, only the new text matches; after delete, nothing of it does."""
    from chat_server.storage.documents import DocumentBody, delete_document, replace_document

    async with asyncio.timeout(WAIT):
        doc = await add(db, game["id"], CATAN_EN)
        body = DocumentBody.from_text(
            language="en", title="Rules", content="Bridges cost one plank.", fmt="text"
        )
        replaced, old_key = await replace_document(
            db, game_id=game["id"], doc_id=doc["id"], body=body
        )
        indexes = Indexes()
        robber = await retrieve(
            db, game_id=game["id"], language="en", question="robber", limit=4, indexes=indexes
        )
        bridge = await retrieve(
            db, game_id=game["id"], language="en", question="bridges", limit=4, indexes=indexes
        )
        await delete_document(db, game_id=game["id"], doc_id=doc["id"])
        gone = await retrieve(
            db, game_id=game["id"], language="en", question="bridges", limit=4, indexes=indexes
        )
    assert (replaced["passages"], old_key) == (1, None)
    assert not robber.matched
    assert bridge.matched and bridge.passages[0].text == "Bridges cost one plank."
    assert gone.passages == [] and not gone.has_documents


async def test_an_original_is_read_back_in_chunks_and_never_spliced(
    db: Database, game: dict[str, Any]
) -> None:
    """The stored file comes back chunk by chunk, byte for byte; a replacement that
    overtakes a download ends it with Unavailable instead of mixing two files."""
    from chat_server.document_text import PageText
    from chat_server.errors import Unavailable
    from chat_server.storage.documents import DocumentBody, replace_document
    from chat_server.storage.originals import document_file, file_chunks

    original = bytes(range(256)) * 40  # 10 240 bytes, every byte value
    body = DocumentBody(
        language="en",
        title="Rules",
        kind="rulebook",
        fmt="pdf",
        texts=[PageText(1, "Roads score one point per tile.")],
        media_type="application/pdf",
        pages=1,
        size=len(original),
        data=original,
    )
    async with asyncio.timeout(WAIT):
        doc = await add_document(db, game_id=game["id"], body=body)
        stored = await document_file(db, game_id=game["id"], doc_id=doc["id"])
        pieces = [p async for p in file_chunks(db, stored, doc["id"], chunk=1000)]
        assert (stored.size, stored.media_type, stored.inline) == (
            len(original),
            "application/pdf",
            None,
        )
        assert len(pieces) == 11 and b"".join(pieces) == original

        reading = file_chunks(db, stored, doc["id"], chunk=1000)
        assert await anext(reading) == original[:1000]
        await replace_document(db, game_id=game["id"], doc_id=doc["id"], body=body)
        with pytest.raises(Unavailable):
            await anext(reading)
