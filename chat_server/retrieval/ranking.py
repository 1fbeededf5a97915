"""The ranking rules, with no I/O: fusion, the glossary, errata precedence, the floor.

A question is ranked twice, by the database's full-text search and by the cosine of
its vector with each passage's; reciprocal rank fusion (``fuse``) merges the two
lists. ``expand`` first adds the game's own words for the player's (the glossary an
admin keeps in the game's ``details``). ``with_corrections`` puts each errata passage
right above the rule it corrects whenever that rule is sent. ``relevant`` is the
floor: a passage counts only if it shares a meaningful word with the question, or its
vector is close; when nothing counts, the rules are silent. ``known_part`` is the
second test of silence: the question without the words the game never uses (in its
passages or its glossary); when that remainder no longer means what the question
means, the question is about something the rules do not cover.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "FUSION_K",
    "Glossary",
    "content_words",
    "expand",
    "fuse",
    "known_part",
    "needles",
    "parse_glossary",
    "stem",
    "with_corrections",
]

FUSION_K = 60  # reciprocal rank fusion's constant (Cormack et al., 2009)
_WORD = re.compile(r"\w+", re.UNICODE)

# Words that say nothing about which rule is meant (English question words and glue).
_STOPWORDS_TEXT = """
a about after again all also am an and any are as at be been before being but by can
cannot could did do does doing done each else ever for from get gets getting got had has
have having he her here hers him his how i if in into is it its itself just let lets me
more most much must my no nor not now of off on once one only or other our out over own
same she should so some such than that the their them then there these they this those
through to too under until up us very was we were what whats when where which while who
whom why will with would yes yet you your yours s t ll re ve d m
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

Glossary = Mapping[str, tuple[str, ...]]  # the game's term → the words players use


def stem(word: str) -> str:
    """A crude English stem, enough to match ``cards``/``card``, ``placed``/``place``."""
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def content_words(text: str) -> list[str]:
    """The meaningful words of ``text``, in order, without repeats, each cut to the first
    5 letters of its stem (so ``lancer`` meets ``lance`` in a French rulebook too)."""
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if word not in STOPWORDS and not word.isdigit() and len(word) > 1:
            seen.setdefault(stem(word)[:5], None)
    return list(seen)


def known_part(question: str, known: frozenset[str]) -> str | None:
    """``question`` without the meaningful words that are not in ``known`` (the content
    words of the game's passages and of its glossary's player words), or None when it
    has none; stop words and numbers stay, so the remainder reads as the question would
    without those words."""
    words = _WORD.findall(question.lower())
    kept = [w for w in words if not (cw := content_words(w)) or cw[0] in known]
    return " ".join(kept) if len(kept) < len(words) else None


def parse_glossary(raw: object) -> dict[str, tuple[str, ...]]:
    """A game's glossary from its ``details["glossary"]``: ``{"Delver": ["worker", …]}``.

    Anything malformed is skipped (the glossary is typed in by an admin)."""
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for term, words in raw.items():
        if isinstance(words, str):
            words = [w.strip() for w in words.split(",")]
        if isinstance(term, str) and term.strip() and isinstance(words, list):
            kept = tuple(w.lower().strip() for w in words if isinstance(w, str) and w.strip())
            if kept:
                out[term.strip()] = kept
    return out


Needles = tuple[tuple[str, frozenset[str]], ...]  # a term, and its words as searched


def needles(glossary: Glossary) -> Needles:
    """The glossary made ready to search: each player's word padded with spaces, as
    written and stemmed (done once per game, not per question)."""
    return tuple(
        (
            term,
            frozenset(
                f" {form} "
                for w in words
                for form in (" ".join(_WORD.findall(w)), " ".join(map(stem, _WORD.findall(w))))
            ),
        )
        for term, words in glossary.items()
    )


def expand(question: str, glossary: Needles) -> str:
    """The question with the game's term added after each player's word it uses."""
    if not glossary:
        return question
    words = _WORD.findall(question.lower())
    lowered = " " + " ".join(words) + " "
    stems = " " + " ".join(map(stem, words)) + " "
    added = [
        term for term, forms in glossary if any(form in lowered or form in stems for form in forms)
    ]
    return f"{question} {' '.join(added)}" if added else question


def fuse(rankings: Iterable[Sequence[str]], k: int = FUSION_K) -> list[str]:
    """Reciprocal rank fusion: ids by the sum of 1/(k + rank) over every ranking."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank + 1)
    return sorted(scores, key=lambda key: -scores[key])


@dataclass(frozen=True, slots=True)
class Evidence:
    """What ties a passage to a question, for the relevance floor."""

    shared_weight: float  # the summed IDF of the question's words the passage has
    cosine: float


def idf(document_frequency: int, documents: int) -> float:
    """Inverse document frequency, never below 0."""
    return max(0.0, math.log((documents + 1) / (document_frequency + 0.5)))


def relevant(evidence: Evidence, *, min_weight: float, min_cosine: float) -> bool:
    """The relevance floor: enough shared rare words, or a close enough vector."""
    return evidence.shared_weight >= min_weight or evidence.cosine >= min_cosine


def with_corrections(
    chosen: Sequence[str], corrects: Mapping[str, Sequence[str]], limit: int
) -> list[str]:
    """``chosen`` (ids, best first) cut to ``limit``, each correction above its rule.

    ``corrects`` maps a rule's id to the errata ids that correct it. A rule that is
    sent brings its corrections along, right above it, even past ``limit``: a rule is
    never sent without its correction.
    """
    out: list[str] = []
    for key in chosen:
        if len(out) >= limit:
            break
        if key in out:
            continue
        out.extend(fix for fix in corrects.get(key, ()) if fix not in out)
        out.append(key)
    return out
