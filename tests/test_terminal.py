"""``chat-server chat`` driven in a real pseudo-terminal against a running server.

The client runs as its own process with the pty as its controlling terminal, so a
typed ``\\x03`` is turned into SIGINT by the terminal itself, as it is for a user.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat_server.auth import mint_token
from chat_server.services import with_local_secret
from chat_server.terminal import footer
from tests.server import RunningServer, free_port, make_settings, running_server

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pty")

TIMEOUT = 20.0
ROBBER = b"What happens when the robber moves?\r"
# Make the pty the child's controlling terminal (setsid is done by start_new_session),
# then become the client: Ctrl-C typed on the pty then reaches it as SIGINT.
SHIM = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'chat_server', *sys.argv[1:]])"
)


class Terminal:
    """A child process on a pseudo-terminal; every read has a deadline."""

    def __init__(self, args: list[str], data_dir: Path, **extra_env: str) -> None:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SUPABASE_", "DATABASE")) and k != "TOKEN"
        }
        env.update(CHAT_DATA_DIR=str(data_dir), ENVIRONMENT="dev", LOG_LEVEL="warning")
        env.update(extra_env)
        master, slave = pty.openpty()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SHIM, *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                cwd=data_dir,
                env=env,
            )
        finally:
            os.close(slave)
        self.master = master
        self.output = ""
        self.mark = 0

    def expect(self, text: str, timeout: float = TIMEOUT) -> str:
        """Wait until ``text`` appears after the last match; return what came up to it."""
        deadline = time.monotonic() + timeout
        while (at := self.output.find(text, self.mark)) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.output}")
        seen, self.mark = self.output[self.mark : at], at + len(text)
        return seen

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += data.decode(errors="replace").replace("\r\n", "\n")
        return bool(data)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.05)
        return self.proc.wait(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        os.close(self.master)


def terminal(
    server: RunningServer, data_dir: Path, *extra: str, token: bool = True, **env: str
) -> Terminal:
    secret = with_local_secret(server.settings).supabase_jwt_secret
    assert secret
    auth = {"Authorization": f"Bearer {mint_token(secret=secret, user_id='lister', role=None)}"}
    with httpx.Client(base_url=server.url, timeout=10) as http:
        games = http.get("/games", headers=auth).json()
    catan = next(g["id"] for g in games["games"] if g["name"] == "Catan")
    args = ["chat", "--game", catan, "--url", server.ws_url, *extra]
    if token:
        args += ["--token", server.token("user-1")]
    return Terminal(args, data_dir, **env)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path_factory.mktemp("srv"), local_token_delay=0.02)) as s:
        yield s


@pytest.fixture
def term(server: RunningServer, tmp_path: Path) -> Iterator[Any]:
    opened: list[Terminal] = []

    def open_(*extra: str, token: bool = True) -> Terminal:
        opened.append(terminal(server, tmp_path, *extra, token=token))
        return opened[-1]

    yield open_
    for t in opened:
        t.close()


def test_question_streams_answer_and_citation(term: Any) -> None:
    """A typed question streams the rulebook answer, then a footer with its citation."""
    t = term()
    t.expect("resume with --session")
    t.expect("> ")
    t.send(ROBBER)
    t.expect("rulebook of Catan says")
    early = t.output  # the answer is on screen before the turn has completed
    assert "-- stop" not in early
    answer = t.expect("-- stop · local rulebook-lookup · ")  # who answered
    assert "steals one random resource card" in answer
    footer = t.expect("> ")
    assert re.search(r"\[p\d+\] [^\n]* — The robber", footer), footer
    # The local provider has no price because it costs nothing: said so, not "unknown".
    assert re.search(r"^\d+ tokens in, \d+ out( \(estimated\))? · no cost \(offline\) · ", footer)
    t.send(b"\x04")  # Ctrl-D at the prompt
    assert t.wait() == 0


def test_session_flag_prints_history(term: Any) -> None:
    """``--session`` resumes a session and prints its earlier questions and answers."""
    first = term()
    session_id = re.search(r"session (\S+) \(", first.expect("resume with --session"))
    assert session_id
    first.expect("> ")
    first.send(ROBBER)
    first.expect("-- stop")
    first.expect("> ")
    first.send(b"\x04")
    assert first.wait() == 0

    again = term("--session", session_id.group(1))
    history = again.expect(f"session {session_id.group(1)} (")
    assert "you: What happens when the robber moves?" in history
    assert "assistant: " in history
    assert "steals one random resource card" in history
    again.expect("> ")
    again.send(b"\x03")  # Ctrl-C at the prompt
    assert again.wait() == 0


def test_dev_token_without_token_flag(tmp_path: Path) -> None:
    """Without ``--token`` the client signs in with a dev token from the local secret."""
    with running_server(
        make_settings(tmp_path, supabase_jwt_secret=None, local_token_delay=0.0)
    ) as local:
        t = terminal(local, tmp_path, token=False)
        try:
            t.expect("resume with --session")
            t.expect("> ")
            t.send(b"\x04")
            assert t.wait() == 0
        finally:
            t.close()


def test_ctrl_c_cancels_the_running_turn(tmp_path: Path) -> None:
    """Ctrl-C during a slow answer stops it as cancelled and the prompt comes back."""
    with running_server(make_settings(tmp_path, local_token_delay=0.2)) as slow:
        t = terminal(slow, tmp_path)
        try:
            t.expect("> ")
            t.send(ROBBER)
            t.expect("offline rulebook lookup")
            t.send(b"\x03")
            answer = t.expect("-- cancelled")
            assert "steals one random resource card" not in answer
            t.expect("> ")
            t.send(b"\x04")
            assert t.wait() == 0
        finally:
            t.close()


def test_refused_connection_is_one_line(tmp_path: Path) -> None:
    """No server at the URL: one clear line and exit status 1."""
    url = f"ws://127.0.0.1:{free_port()}/ws/chat"
    t = Terminal(["chat", "--game", "g", "--url", url, "--token", "x"], tmp_path)
    try:
        assert t.wait() == 1
        lines = [line for line in t.output.splitlines() if line.strip()]
        assert lines == [
            f"chat-server chat: cannot connect to {url}: "
            "connection refused (is `chat-server serve` running?)"
        ]
    finally:
        t.close()


def test_token_from_the_environment(server: RunningServer, tmp_path: Path) -> None:
    """Without ``--token``, ``$TOKEN`` signs in (its user, not a dev token's)."""
    t = terminal(server, tmp_path, token=False, TOKEN=server.token("env-user"))
    try:
        session = re.search(r"session (\S+) \(", t.expect("resume with --session"))
        assert session
        t.expect("> ")
        admin = {"Authorization": f"Bearer {server.token('staff-1', 'admin')}"}
        live = httpx.get(f"{server.url}/admin/sessions", headers=admin, timeout=10).json()
        users = {row["id"]: row["user_id"] for row in live["sessions"]}
        assert users.get(session.group(1)) == "env-user", live
        t.send(b"\x04")
        assert t.wait() == 0
    finally:
        t.close()


def test_an_admin_kill_is_told_at_once_in_words(server: RunningServer, tmp_path: Path) -> None:
    """An admin ends the session while the client waits at the prompt: it says so, exit 1."""
    t = terminal(server, tmp_path)
    try:
        session = re.search(r"session (\S+) \(", t.expect("resume with --session"))
        assert session
        t.expect("> ")
        admin = {"Authorization": f"Bearer {server.token('staff-1', 'admin')}"}
        killed = httpx.delete(
            f"{server.url}/admin/sessions/{session.group(1)}", headers=admin, timeout=10
        )
        assert killed.status_code == 204, killed.text
        # Nothing is typed: the client notices the close by itself.
        t.expect("an administrator ended this session (close code 4000")
        assert t.wait() == 1
    finally:
        t.close()


def test_a_server_restart_is_told_in_words(tmp_path: Path) -> None:
    """The server shuts down under an idle client: "the server is restarting", exit 1."""
    with running_server(make_settings(tmp_path, shutdown_grace=0.0)) as doomed:
        t = terminal(doomed, tmp_path)
        try:
            t.expect("> ")
            doomed.stop()
            t.expect("the server is restarting")
            assert t.wait() == 1
        finally:
            t.close()


def test_footer_names_who_answered_tokens_and_cost() -> None:
    """A CONTRACT §2 ``turn.completed`` gives a footer with provider, model, tokens, cost."""
    frame = {
        "type": "turn.completed",
        "finish_reason": "stop",
        "provider": "anthropic",
        "model": "claude-sonnet-5-5",
        "usage": {"input_tokens": 812, "output_tokens": 95, "estimated": True, "cost_usd": 0.0038},
        "citations": [{"passage_id": "p1", "title": "Catan rules", "heading": "The robber"}],
        "timing": {"first_token_ms": 420, "total_ms": 2300},
    }
    assert footer(frame) == (
        "-- stop · anthropic claude-sonnet-5-5 · 812 tokens in, 95 out (estimated) · $0.0038"
        " · 2.3 s\n   [p1] Catan rules — The robber\n"
    )
    frame["usage"] = {"input_tokens": 5, "output_tokens": 7, "estimated": False, "cost_usd": None}
    assert "5 tokens in, 7 out · cost unknown · " in footer(frame)  # a model with no price
    frame.update(provider="local", model="rulebook-lookup")
    assert "5 tokens in, 7 out · no cost (offline) · " in footer(frame)
    # An older server sends neither who answered nor the cost: they are left out.
    older = {"finish_reason": "cancelled", "usage": {"input_tokens": 1, "output_tokens": 2}}
    assert footer(older) == "-- cancelled · 1 tokens in, 2 out · 0.0 s\n"


def test_an_expired_token_is_told_in_words_at_the_prompt(tmp_path: Path) -> None:
    """The token runs out while the client waits at the prompt: it says why, exit 1."""
    with running_server(make_settings(tmp_path, jwt_leeway=0.0)) as strict:
        t = terminal(strict, tmp_path, token=False, TOKEN=strict.token("user-1", ttl=2))
        try:
            t.expect("> ")
            t.expect("error: token_expired", timeout=15)
            t.expect("the token was refused or has expired (close code 4401")
            assert t.wait() == 1
        finally:
            t.close()


def test_a_turn_asked_from_another_connection_is_shown_at_the_prompt(term: Any) -> None:
    """Two terminals on one session: the idle one shows the other's answer as it streams."""
    asker = term()
    session = re.search(r"session (\S+) \(", asker.expect("resume with --session"))
    assert session
    asker.expect("> ")
    follower = term("--session", session.group(1))
    follower.expect("> ")
    asker.send(ROBBER)
    asker.expect("-- stop")
    follower.expect("(a question asked from another connection to this session)")
    shown = follower.expect("-- stop")
    assert "steals one random resource card" in shown
    follower.expect("> ")
    for t in (asker, follower):
        t.send(b"\x04")
        assert t.wait() == 0
