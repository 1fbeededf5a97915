"""The product's event-stream reader against the openai SDK's own decoder: random events,
framed with random legal variations and cut at random points, give the same events."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from chat_server.errors import ProviderError
from chat_server.providers.sse import MAX_EVENT_BYTES, SSEReader, reframe

from .support import scaled

pytestmark = pytest.mark.faults

# Characters a line may hold: anything but CR and LF (U+2028, U+2029, U+0085 and NUL
# included, which are text), never a surrogate (the bytes must be UTF-8).
LINE_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
        st.sampled_from(["\u2028", "\u2029", "\u0085", "\x00", ":", " ", "é", "🎲", "{", '"']),
    ),
    max_size=30,
)
LINE_END = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def event_block(draw: st.DrawFn) -> list[str]:
    """The lines of one event (at least one data line), in a random order of fields."""
    lines = [f"data:{draw(st.sampled_from(['', ' ']))}{draw(LINE_TEXT)}"]
    for _ in range(draw(st.integers(0, 4))):
        # No id: lines (the SDK's decoder dispatches an empty event at every blank line
        # once it saw an id; the standard does not). Ids: test_an_id_is_kept.
        kind = draw(st.sampled_from(["data", "comment", "event", "retry", "bare", "other"]))
        value = draw(LINE_TEXT)
        space = draw(st.sampled_from(["", " "]))
        lines.insert(
            draw(st.integers(0, len(lines))),
            {
                "data": f"data:{space}{value}",
                "comment": f":{value}",
                "event": f"event:{space}{value.replace(':', '')}",
                "retry": f"retry:{space}{draw(st.integers(0, 9999))}",
                "bare": "data",  # a field name alone: data with an empty value
                "other": f"x-field:{space}{value}",
            }[kind],
        )
    return lines


@st.composite
def stream(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A whole stream (blocks separated by blank lines, comment-only blocks between),
    and the same stream, maybe behind a BOM, cut into random chunks."""
    out: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()) and draw(st.booleans()):
            out.append(f":{draw(LINE_TEXT)}{draw(LINE_END)}")  # a lone comment block
        for line in draw(event_block()):
            out.append(line + draw(LINE_END))
        out.append(draw(LINE_END))  # the blank line that dispatches
    out.append("\n\n")  # whatever the last line end was, the last event is dispatched
    body = "".join(out).encode()
    sent = (b"\xef\xbb\xbf" if draw(st.booleans()) else b"") + body
    cuts = sorted(set(draw(st.lists(st.integers(0, len(sent)), max_size=12))))
    if draw(st.booleans()):
        cuts = list(range(len(sent) + 1))  # one byte per read
    edges = [0, *cuts, len(sent)]
    chunks = [sent[a:b] for a, b in itertools.pairwise(edges) if b > a]
    return body, chunks


def oracle(body: bytes) -> list[tuple[str, str]]:
    """The SDK's events; the blocks here always hold data, so every one it dispatches does."""
    return [(e.event or "", e.data) for e in SSEDecoder().iter_bytes(iter([body]))]


def ours(chunks: list[bytes]) -> list[tuple[str, str]]:
    reader = SSEReader()
    events: list[tuple[str, str]] = []
    for chunk in chunks:
        events += reader.feed(chunk)
    events += reader.close()
    return events


@settings(
    max_examples=scaled(2000, 200),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream())
def test_any_framing_and_any_cut_give_the_sdk_decoders_events(
    case: tuple[bytes, list[bytes]],
) -> None:
    """Random events, line ends, spaces, comments, fields, BOM and cuts: the SDK's events."""
    body, chunks = case
    assert ours(chunks) == oracle(body)


@settings(max_examples=scaled(500, 100), deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", "message_start", "content_block_delta"]),
            st.lists(LINE_TEXT, min_size=1, max_size=3).map("\n".join),
        ),
        max_size=5,
    )
)
def test_reframed_events_read_back_the_same(events: list[tuple[str, str]]) -> None:
    """What the gemini adapter hands its SDK (``reframe``) reads back as the same events."""
    assert ours([reframe(events)]) == events
    assert oracle(reframe(events)) == events


def test_an_unfinished_event_at_a_whole_body_end_is_dispatched() -> None:
    """A body that ends right after a data line (no blank line) still gives that event."""
    reader = SSEReader()
    assert reader.feed(b'data: {"a": 1}\n\ndata: {"usage"') == [("", '{"a": 1}')]
    assert reader.close() == [("", '{"usage"')]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    """Bytes that are not UTF-8 inside an event's data are U+FFFD, as the standard decodes."""
    reader = SSEReader()
    assert reader.feed(b"data: a\xff\xc3b\n\n") == [("", "a\ufffd\ufffdb")]


def test_an_id_is_kept_unless_it_holds_a_nul() -> None:
    """``id:`` sets the last event id; one with a NUL is ignored, as the standard says."""
    reader = SSEReader()
    assert reader.feed(b"id: 7\ndata: x\n\nid: 8\x00\ndata: y\n\n") == [("", "x"), ("", "y")]
    assert reader.last_id == "7"


def test_an_event_over_16_mib_is_provider_error() -> None:
    """One endless line, or an event of very many data lines, past 16 MiB: the stream is
    provider_error (an upstream cannot fill the memory); 16 MiB of lines read quickly."""
    endless = SSEReader()
    with pytest.raises(ProviderError):
        for _ in range(MAX_EVENT_BYTES // (1 << 20) + 1):
            endless.feed(b"x" * (1 << 20))
    many = SSEReader()
    line = b"data: " + b"y" * 9 + b"\n"
    block = line * 100_000  # 1 MB of data, in 10-byte lines
    with pytest.raises(ProviderError):
        for _ in range(MAX_EVENT_BYTES // 1_000_000 + 2):
            many.feed(block)
    just_under = SSEReader()
    for _ in range(15):
        just_under.feed(block)
    ((_, data),) = just_under.feed(b"\n")
    assert len(data) == 15 * 100_000 * 10 - 1
