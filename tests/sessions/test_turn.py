"""A turn's rules without sockets: numbering, merging, resume, the stored record."""

from __future__ import annotations

from chat_server.prices import ModelPrice, PriceTable
from chat_server.providers.base import ChatMessage, CitationRef, Passage, ProviderRequest, Usage
from chat_server.sessions.turn import Turn

REQUEST = ProviderRequest(
    model="",
    system="",
    messages=[ChatMessage("user", "How does the robber move?")],
    passages=[],
    language="en",
    game_name="Catan",
)


def make_turn(**extra: object) -> Turn:
    values: dict[str, object] = {
        "id": "t1",
        "session_id": "s1",
        "user_id": "u1",
        "game_id": "g1",
        "provider": "local",
        "model": "m",
        "user_message_id": "um",
        "message_id": "am",
        "client_id": None,
        "started_at": 100.0,
    }
    values.update(extra)
    return Turn(**values)  # type: ignore[arg-type]


def test_deltas_are_numbered_and_merge_what_arrived_between_pulls() -> None:
    """Each pull takes everything since the last one, with the next seq."""
    turn = make_turn()
    assert turn.take_delta() is None
    turn.add_text("Hel", 100.1)
    turn.add_text("lo", 100.2)
    first = turn.take_delta()
    assert first == {"type": "turn.delta", "turn_id": "t1", "seq": 1, "text": "Hello"}
    assert turn.take_delta() is None
    turn.add_text(" world", 100.3)
    assert turn.take_delta() == {"type": "turn.delta", "turn_id": "t1", "seq": 2, "text": " world"}
    assert turn.text == "Hello world"


def test_resume_replays_exactly_what_was_missed() -> None:
    """A client that saw seq 1 gets everything after it as seq 2, then goes on live."""
    turn = make_turn()
    for i, word in enumerate(["a ", "b ", "c ", "d "]):
        turn.add_text(word, 100 + i)
        turn.take_delta()
    turn.add_text("e ", 105)  # arrived while nobody was attached
    turn.resume(1)
    replay = turn.take_delta()
    assert replay is not None
    assert (replay["seq"], replay["text"]) == (2, "b c d e ")
    turn.add_text("f", 106)
    live = turn.take_delta()
    assert live is not None
    assert (live["seq"], live["text"]) == (3, "f")


def test_resume_beyond_what_was_sent_is_clamped() -> None:
    """after_seq larger than the last seq sent means the client has everything."""
    turn = make_turn()
    turn.add_text("x", 101)
    turn.take_delta()
    turn.resume(99)
    assert turn.take_delta() is None
    turn.add_text("y", 102)
    delta = turn.take_delta()
    assert delta is not None
    assert (delta["seq"], delta["text"]) == (2, "y")


def test_completed_frame_and_record_carry_status_usage_and_citations() -> None:
    """The final frame and the stored record agree on what happened."""
    passage = Passage(
        id="p1",
        document_id="d1",
        title="Rules",
        heading="Robber",
        text="The robber steals.",
        ordinal=3,
        language="en",
    )
    turn = make_turn(passages=[passage])
    turn.add_text("It steals [p1].", 100.25)
    turn.cite(CitationRef("p1", "The robber steals."))
    turn.report_usage(Usage(input_tokens=10, output_tokens=4), final=True)
    turn.finish("stop", 101.0)
    prices = PriceTable({"m": ModelPrice(input=1.0, output=2.0)})
    turn.settle_usage(prices, REQUEST)
    frame = turn.completed_frame()
    assert frame["finish_reason"] == "stop"
    assert (frame["provider"], frame["model"]) == ("local", "m")
    assert frame["usage"] == {
        "input_tokens": 10,
        "output_tokens": 4,
        "estimated": False,
        "cost_usd": 18 / 1_000_000,
    }
    assert frame["timing"] == {"first_token_ms": 250, "total_ms": 1000}
    assert frame["citations"][0]["heading"] == "Robber"
    record = turn.record()
    assert (record.status, record.content, record.first_token_ms) == (
        "complete",
        "It steals [p1].",
        250,
    )


def test_finish_is_final_and_error_without_text_cites_nothing() -> None:
    """The first finish wins; an error before any text stores an empty error."""
    passage = Passage(
        id="p1", document_id="d1", title="R", heading=None, text="t", ordinal=0, language="en"
    )
    turn = make_turn(passages=[passage])
    turn.finish("error", 100.5, "provider_error")
    turn.finish("stop", 101.0)
    assert turn.status == "error"
    assert turn.record().error_code == "provider_error"
    assert turn.citations() == []
    assert turn.completed_frame()["timing"]["first_token_ms"] is None


def test_cancelled_turn_keeps_its_partial_text() -> None:
    """A cancelled turn is stored cancelled with what streamed so far."""
    turn = make_turn()
    turn.add_text("partial", 100.1)
    turn.finish("cancelled", 100.2)
    assert (turn.status, turn.record().content) == ("cancelled", "partial")
