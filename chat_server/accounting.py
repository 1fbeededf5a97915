"""A finished turn's token counts: what the provider reported, else an estimate.

Providers report usage at the end of a stream (OpenAI, Gemini) or partly at its start
(Anthropic's ``message_start`` carries the input tokens). A turn that was cancelled or
cut before the final report still used tokens: ``settle()`` keeps every figure the
provider gave and estimates the missing ones from the text at ``CHARS_PER_TOKEN``
characters a token (the vendors' own rule of thumb for English), saying so with
``estimated``. A turn that failed before anything came back (an error status, a
refused connection) used nothing: it stays at zero, not estimated.
"""

from __future__ import annotations

from dataclasses import dataclass

from .providers.base import ProviderRequest, Usage
from .providers.prompt import system_instructions

__all__ = ["CHARS_PER_TOKEN", "Settled", "estimate_tokens", "prompt_chars", "settle"]

CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Settled:
    usage: Usage
    estimated: bool


def estimate_tokens(chars: int) -> int:
    """Tokens for ``chars`` characters of text (rounded up; 0 for no text)."""
    return -(-max(chars, 0) // CHARS_PER_TOKEN)


def prompt_chars(request: ProviderRequest) -> int:
    """The characters a provider is sent for ``request``: instructions, passages, messages."""
    chars = len(system_instructions(request.game_name, request.language, bool(request.passages)))
    chars += len(request.system) + sum(len(m.content) for m in request.messages)
    for p in request.passages:
        chars += len(p.text) + len(p.title) + len(p.heading or "") + len(p.id)
    return chars


def settle(
    reported: Usage | None,
    *,
    final: bool,
    answer_chars: int,
    request: ProviderRequest,
    failed: bool,
) -> Settled:
    """The usage to count for a turn.

    ``reported``: the provider's latest report (None: none came); ``final``: it was the
    end-of-stream report; ``answer_chars``: the characters streamed; ``failed``: the turn
    ended in an error (when nothing came back either, nothing was used). A final report is
    taken as it is, except that zeros where text did flow are estimated (an upstream
    that reports no usage). Without a final report, input tokens come from the early
    report when there is one, and output tokens are the larger of the reported count
    and the estimate from the streamed text.
    """
    if failed and reported is None and answer_chars == 0:
        return Settled(Usage(), estimated=False)  # refused or unreachable: nothing billed
    usage = reported or Usage()
    input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
    estimated = False
    if input_tokens == 0 and usage.cache_read_tokens == 0 and usage.cache_creation_tokens == 0:
        input_tokens, estimated = estimate_tokens(prompt_chars(request)), True
    if answer_chars:
        guess = estimate_tokens(answer_chars)
        if (not final and guess > output_tokens) or output_tokens == 0:
            output_tokens, estimated = guess, True
    return Settled(
        Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_creation_tokens=usage.cache_creation_tokens,
        ),
        estimated=estimated,
    )
