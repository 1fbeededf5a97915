"""How the rulebook passages and the question are put to a language model.

One place, so that every provider grounds its answer the same way; Anthropic sends
the passages as a document block instead of inline text and uses
``system_instructions`` alone.
"""

from __future__ import annotations

from .base import Passage

__all__ = ["passage_label", "passages_block", "system_instructions", "system_prompt"]


def system_instructions(
    game_name: str, language: str, has_passages: bool, rules_silent: bool = False
) -> str:
    """The instructions, without the passages themselves. ``rules_silent``: the game has
    rules, but none answers the question."""
    lines = [
        f"You are a rules assistant for the board game {game_name}.",
        f"Answer in the language with code '{language}'.",
        "Answer only from the rulebook passages given to you, and cite them by their id "
        "in square brackets, like [p1].",
    ]
    if rules_silent:
        lines.append(
            "The rulebook, errata and FAQ of this game say nothing about this question: "
            "tell the player that the rules are silent on it, and do not invent a rule."
        )
    elif not has_passages:
        lines.append(
            "No rulebook passages are available for this game: say so plainly and do not "
            "invent rules."
        )
    else:
        lines.append("If the passages do not answer the question, say that they do not.")
        lines.append(
            "A passage marked (errata) corrects the rulebook and overrides it where they "
            "differ; a passage marked (faq) is an official clarification."
        )
    return "\n".join(lines)


def passage_label(p: Passage) -> str:
    """How a passage is named to the model: title, heading, PDF page, and its kind when
    that outranks the rulebook (errata, FAQ)."""
    label = p.title + (f" — {p.heading}" if p.heading else "")
    if p.page is not None:
        label += f" (page {p.page})"
    if p.kind in ("errata", "faq"):
        label += f" ({p.kind})"
    return label


def passages_block(passages: list[Passage]) -> str:
    """The passages as text, each headed by its id."""
    return "\n\n".join(f"[{p.id}] {passage_label(p)}\n{p.text}" for p in passages)


def system_prompt(
    game_name: str, language: str, passages: list[Passage], rules_silent: bool = False
) -> str:
    """Instructions and passages in one system text (OpenAI, Gemini)."""
    text = system_instructions(game_name, language, bool(passages), rules_silent)
    if passages:
        text += "\n\nRulebook passages:\n\n" + passages_block(passages)
    return text
