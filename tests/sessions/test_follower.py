"""Followers without sockets: cursors share a turn's cuts, a lagging one catches up
in order, a mirror keeps the owner's numbering."""

from __future__ import annotations

from typing import Any

from chat_server.sessions.follower import Cursor, Follower, SessionFollowers
from chat_server.sessions.mirror import Mirror
from chat_server.sessions.outbox import Outbox
from tests.sessions.test_turn import make_turn


def drain(outbox: Outbox) -> list[dict[str, Any]]:
    frames = []
    while (frame := outbox.pop()) is not None:
        frames.append(frame)
    return frames


def follower(name: str) -> Follower:
    return Follower(name, "client", Outbox(max_frames=8))


def test_the_first_to_pull_cuts_and_the_others_send_the_same_delta() -> None:
    """Two cursors: the faster one cuts each delta; the other gets the very same
    objects, with the same seq, even if it pulls later."""
    turn = make_turn()
    fast, slow = follower("fast"), follower("slow")
    cursors = [Cursor(turn, fast, 0), Cursor(turn, slow, 0)]
    for word in ("a ", "b ", "c "):
        turn.add_text(word, 1.0)
        for cursor in cursors:
            cursor.pull()
        assert len(drain(fast.outbox)) == 1  # the fast one sends each as it comes
    turn.add_text("d", 2.0)
    for cursor in cursors:
        cursor.pull()
    fast_last = drain(fast.outbox)
    slow_frames = drain(slow.outbox)
    assert [(f["seq"], f["text"]) for f in slow_frames] == [
        (1, "a "),
        (2, "b "),
        (3, "c "),
        (4, "d"),
    ]
    assert slow_frames[-1] is fast_last[0]  # the latest delta is one shared object


def test_a_lagging_cursor_stays_ahead_of_what_was_queued_after_it() -> None:
    """A cursor several deltas behind is taken again before the frames queued after
    it: every delta of the turn comes before its turn.completed."""
    turn = make_turn()
    fast, slow = follower("fast"), follower("slow")
    lagging = Cursor(turn, slow, 0)
    for i in range(5):
        turn.add_text(f"{i}", 1.0)
        Cursor(turn, fast, turn.seq).take_delta()  # the fast one cuts each token
    lagging.pull()
    slow.outbox.put({"type": "turn.completed"})
    frames = drain(slow.outbox)
    assert [f.get("seq") for f in frames] == [1, 2, 3, 4, 5, None]
    assert frames[-1]["type"] == "turn.completed"


def test_a_joiner_starts_after_its_after_seq() -> None:
    """A cursor made at after_seq 2 of a turn cut to 3 takes seq 3, then new text."""
    turn = make_turn()
    for word in ("x", "y", "z"):
        turn.add_text(word, 1.0)
        turn.take_delta()
    late = follower("late")
    cursor = Cursor(turn, late, 2)
    cursor.pull()
    turn.add_text("!", 2.0)
    cursor.pull()
    assert [(f["seq"], f["text"]) for f in drain(late.outbox)] == [(3, "z"), (4, "!")]


def test_a_mirror_keeps_the_owners_seq_and_greets_from_the_start() -> None:
    """A mirror takes the owner's deltas as cut; a follower from the start gets
    turn.started, one joining at seq 1 gets the rest; a gap is ignored."""
    mirror = Mirror("t1", "s1")
    first, late = follower("first"), follower("late")
    mirror.join(first, 0, from_start=True)
    mirror.apply({"type": "relay.attached", "seq": 0, "message_id": "m1"})
    mirror.apply({"type": "turn.started", "turn_id": "t1"})
    for seq, text in ((1, "He"), (2, "llo"), (4, "gap")):
        mirror.apply({"type": "turn.delta", "turn_id": "t1", "seq": seq, "text": text})
    mirror.join(late, 1)
    mirror.apply({"type": "turn.completed", "turn_id": "t1", "finish_reason": "stop"})
    assert mirror.done and mirror.running == {"turn_id": "t1", "message_id": "m1", "seq": 2}
    assert [f["type"] for f in drain(first.outbox)] == [
        "turn.started",
        "turn.delta",
        "turn.delta",
        "turn.completed",
    ]
    assert [(f["type"], f.get("seq")) for f in drain(late.outbox)] == [
        ("turn.delta", 2),
        ("turn.completed", None),
    ]


def test_session_followers_say_when_the_last_one_left() -> None:
    """remove() is True only for a session's last follower here."""
    followers = SessionFollowers()
    one, two = follower("1"), follower("2")
    followers.add("s", one)
    followers.add("s", two)
    followers.add("s", two)
    assert followers.of("s") == [one, two]
    assert followers.remove("s", one) is False
    assert followers.remove("s", two) is True
    assert "s" not in followers and followers.of("s") == []
