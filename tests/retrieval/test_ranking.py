"""The ranking rules on their own: fusion, the glossary, errata precedence, the floor."""

from __future__ import annotations

from chat_server.retrieval.ranking import (
    Evidence,
    content_words,
    expand,
    fuse,
    known_part,
    needles,
    parse_glossary,
    relevant,
    with_corrections,
)


def test_fusion_favours_what_both_rankings_agree_on() -> None:
    """A passage second in both lists beats one first in a single list."""
    assert fuse([["a", "b", "c"], ["d", "b", "e"]])[0] == "b"
    assert fuse([["a"], []]) == ["a"]
    assert fuse([[], []]) == []


def test_glossary_adds_the_games_word_for_the_players() -> None:
    """'workers' in a question brings 'Delver'; a phrase matches whole; nothing else added."""
    glossary = needles(
        parse_glossary({"Delver": ["worker", "meeple"], "Foreman": "first player, start"})
    )
    assert expand("how do I get more workers", glossary).endswith("Delver")
    assert expand("who is the first player", glossary).endswith("Foreman")
    assert expand("who plays first", glossary) == "who plays first"
    assert parse_glossary(["not", "a", "mapping"]) == {}
    assert parse_glossary({"Empty": [], 3: ["x"]}) == {}


def test_a_correction_comes_right_above_the_rule_it_corrects() -> None:
    """A sent rule brings its errata above it, even past the limit; others keep order."""
    corrects = {"rule": ["fix"]}
    assert with_corrections(["x", "rule", "y"], corrects, limit=3) == ["x", "fix", "rule"]
    assert with_corrections(["rule", "fix"], corrects, limit=1) == ["fix", "rule"]
    assert with_corrections(["fix", "rule"], corrects, limit=2) == ["fix", "rule"]
    assert with_corrections(["a", "b", "rule"], corrects, limit=2) == ["a", "b"]


def test_relevance_floor() -> None:
    """A passage clears the floor by a rare shared word or a close vector, not by neither."""
    assert relevant(Evidence(1.0, 0.1), min_weight=0.72, min_cosine=0.4)
    assert relevant(Evidence(0.0, 0.5), min_weight=0.72, min_cosine=0.4)
    assert not relevant(Evidence(0.5, 0.3), min_weight=0.72, min_cosine=0.4)


def test_content_words_drop_question_glue_and_fold_endings() -> None:
    """Question words go; 'rolls' and 'rolled' meet; 'lancer' meets 'lance'."""
    assert content_words("How do I roll the dice?") == ["roll", "dice"]
    assert content_words("rolls") == content_words("rolled")
    assert content_words("lancer") == content_words("lance")


async def test_local_provider_says_the_rules_are_silent() -> None:
    """When no passage clears the floor, the offline provider says the rules are silent."""
    from chat_server.providers.base import ChatMessage, ProviderRequest, TextDelta
    from chat_server.providers.local import LocalProvider

    request = ProviderRequest(
        model="",
        system="",
        messages=[ChatMessage("user", "is there an app?")],
        passages=[],
        language="en",
        game_name="Hollowdeep",
        rules_silent=True,
    )
    provider = LocalProvider(token_delay=0)
    text = "".join([e.text async for e in provider.stream(request) if isinstance(e, TextDelta)])
    assert "rules are silent" in text and "no rulebook" not in text


def test_known_part_drops_the_words_the_game_never_uses() -> None:
    """Unknown content words go, stop words and known words stay; all known: None."""
    known = frozenset(content_words("Dragons are not in this rulebook; a mine and an attack are"))
    known = known - {"drago"}
    assert known_part("Can dragons attack my mine?", known) == "can attack my mine"
    assert known_part("can I attack a mine", known) is None
    assert known_part("are there any expansions", frozenset()) == "are there any"
