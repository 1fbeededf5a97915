"""Splitting a rulebook into passages: the unit that is searched, sent and cited.

Markdown is split at headings; plain text at blank lines. Small paragraphs under one
heading are merged up to ``max_chars`` so a passage carries enough context to answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Passage", "PassageText", "split_passages"]

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True, slots=True)
class Passage:
    """A stored, searchable piece of a game's rulebook: what grounding finds, a provider
    is sent and an answer cites. Defined here, with the splitting, so that storage and
    providers share it without either importing the other."""

    id: str
    document_id: str
    title: str
    heading: str | None
    text: str
    ordinal: int
    language: str
    kind: str = "rulebook"  # the document's kind: rulebook, faq, errata or expansion
    page: int | None = None  # the PDF page (1-based), None for text and Markdown


@dataclass(frozen=True, slots=True)
class PassageText:
    heading: str | None
    text: str


def split_passages(content: str, fmt: str, max_chars: int = 900) -> list[PassageText]:
    """Cut ``content`` into passages, each under one heading (Markdown) and ≤ max_chars."""
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    paragraph: list[str] = []

    def flush_paragraph() -> None:
        if paragraph:
            sections[-1][1].append(" ".join(line.strip() for line in paragraph).strip())
            paragraph.clear()

    for line in content.replace("\r\n", "\n").split("\n"):
        match = _HEADING.match(line) if fmt == "markdown" else None
        if match:
            flush_paragraph()
            sections.append((match.group(2).strip(), []))
        elif not line.strip():
            flush_paragraph()
        else:
            paragraph.append(line)
    flush_paragraph()

    passages: list[PassageText] = []
    for heading, paragraphs in sections:
        chunk = ""
        for para in (p for p in paragraphs if p):
            for piece in _pieces(para, max_chars):
                if chunk and len(chunk) + 1 + len(piece) > max_chars:
                    passages.append(PassageText(heading, chunk))
                    chunk = piece
                else:
                    chunk = f"{chunk}\n{piece}" if chunk else piece
        if chunk:
            passages.append(PassageText(heading, chunk))
    return passages


def _pieces(paragraph: str, max_chars: int) -> list[str]:
    """A paragraph longer than max_chars, cut at sentence ends (or hard, as a last resort)."""
    if len(paragraph) <= max_chars:
        return [paragraph]
    out: list[str] = []
    current = ""
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        while len(sentence) > max_chars:
            out.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        if current and len(current) + 1 + len(sentence) > max_chars:
            out.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        out.append(current)
    return out
