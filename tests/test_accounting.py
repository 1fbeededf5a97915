"""A finished turn's token counts: the provider's report, else an estimate from the text."""

from __future__ import annotations

from chat_server.accounting import estimate_tokens, prompt_chars, settle
from chat_server.providers.base import ChatMessage, ProviderRequest, Usage

REQUEST = ProviderRequest(
    model="",
    system="",
    messages=[ChatMessage("user", "How does the robber move?" * 10)],
    passages=[],
    language="en",
    game_name="Catan",
)


def test_a_final_report_is_taken_as_it_is() -> None:
    """The end-of-stream report wins over any estimate, even for a long text."""
    usage = Usage(input_tokens=300, output_tokens=12, cache_read_tokens=100)
    done = settle(usage, final=True, answer_chars=4000, request=REQUEST, failed=False)
    assert (done.usage, done.estimated) == (usage, False)


def test_an_early_report_keeps_its_input_and_estimates_the_output() -> None:
    """Cancelled after message_start: its input counts; output from the streamed text."""
    early = Usage(input_tokens=900, output_tokens=1, cache_read_tokens=50)
    done = settle(early, final=False, answer_chars=403, request=REQUEST, failed=False)
    assert (done.usage.input_tokens, done.usage.cache_read_tokens) == (900, 50)
    assert done.usage.output_tokens == 101  # 403 characters at 4 a token, rounded up
    assert done.estimated


def test_no_report_estimates_both_from_the_request_and_the_text() -> None:
    """A stream cut before any report: input from what was sent, output from what came."""
    done = settle(None, final=False, answer_chars=8, request=REQUEST, failed=True)
    assert done.usage.input_tokens == estimate_tokens(prompt_chars(REQUEST)) > 60
    assert done.usage.output_tokens == 2
    assert done.estimated


def test_a_cancel_before_the_first_token_counts_the_input() -> None:
    """Cancelled while the provider was thinking: the prompt was sent, so it counts."""
    done = settle(None, final=False, answer_chars=0, request=REQUEST, failed=False)
    assert done.usage.input_tokens > 0 and done.usage.output_tokens == 0
    assert done.estimated


def test_a_refusal_before_anything_came_back_counts_nothing() -> None:
    """An error status before any byte of answer: nothing used, nothing estimated."""
    done = settle(None, final=False, answer_chars=0, request=REQUEST, failed=True)
    assert (done.usage, done.estimated) == (Usage(), False)


def test_a_final_report_of_zeros_with_text_is_estimated() -> None:
    """An upstream that reports no usage at all (zeros) while text flowed is estimated."""
    done = settle(Usage(), final=True, answer_chars=40, request=REQUEST, failed=False)
    assert done.usage.output_tokens == 10 and done.usage.input_tokens > 0
    assert done.estimated
