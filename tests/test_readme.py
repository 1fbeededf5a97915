"""The README, followed by a newcomer on a fresh clone: the tour pasted as one block,
the Python snippet, and ``/docs`` working offline.

The repository's HEAD is cloned into a temporary folder and the README's own commands
run there, in bash, as written (only the port is changed, so that a server already on
8000 does not get in the way). To spare a full ``pip install`` the clone's ``.venv`` is
made here the way ``scripts/serve`` would leave it: a venv whose ``chat-server`` runs
the clone's code on the packages already installed for this test run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.server import free_port

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
QUESTION = "What happens when a seven is rolled?"
KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TERM")


def readme_block(language: str, after: str) -> str:
    """The first fenced ``language`` block after the heading ``after``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(after) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


def installed_like_serve(clone: Path) -> None:
    """A ``.venv`` as ``scripts/serve`` leaves it, without downloading anything."""
    venv = clone / ".venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=TIMEOUT
    )
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # The clone's own code first, then this run's installed dependencies.
    (purelib / "_readme_test.pth").write_text(
        f"{clone}\n{sysconfig.get_path('purelib')}\n", encoding="utf-8"
    )
    script = venv / "bin" / "chat-server"
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\n"
        "import sys\nfrom chat_server.cli import main\nsys.exit(main())\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    (venv / ".installed-serve").touch()


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None or shutil.which("curl") is None:
        pytest.skip("needs git and curl")
    path = tmp_path_factory.mktemp("readme") / "chat-server"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True, timeout=TIMEOUT)
    installed_like_serve(path)
    return path


def env_for(port: int) -> dict[str, str]:
    """A newcomer's shell: nothing of ours configured, the server on ``port``."""
    env = {k: v for k, v in os.environ.items() if k in KEPT}
    env.update(PORT=str(port), LOCAL_TOKEN_DELAY="0")
    return env


class TourRun:
    def __init__(self, clone: Path, port: int) -> None:
        self.clone = clone
        self.port = port
        tour = readme_block("sh", "## A 60-second tour").replace("8000", str(port))
        snippet = readme_block("python", "## A 60-second tour").replace("8000", str(port))
        (clone / "chat.py").write_text(snippet, encoding="utf-8")
        # The README: paste the tour, then run the snippet "in the same shell".
        (clone / "tour.sh").write_text(
            "set -e\n" + tour + "\n.venv/bin/python chat.py\n", encoding="utf-8"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.stdout = self.stderr = ""

    def start(self) -> None:
        clone = self.clone
        # Output to files, not pipes: the server left running in the background keeps
        # its copies of them open.
        out, err = clone / "tour.out", clone / "tour.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            self.proc = subprocess.Popen(
                ["bash", "tour.sh"],
                cwd=clone,
                env=env_for(self.port),
                stdin=subprocess.PIPE,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # the background server too: killed as a group
            )
        assert self.proc.stdin is not None
        # What the newcomer types into the terminal client; then Ctrl-D.
        self.proc.stdin.write((QUESTION + "\n").encode())
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=TIMEOUT)
        finally:
            self.stdout = out.read_text(encoding="utf-8", errors="replace")
            self.stderr = err.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        with_group = self.proc.pid
        try:
            os.killpg(with_group, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(with_group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.killpg(with_group, signal.SIGKILL)


@pytest.fixture(scope="module")
def tour(clone: Path) -> Iterator[TourRun]:
    run = TourRun(clone, free_port())
    try:
        run.start()
        yield run
    finally:
        run.stop()


def test_the_tour_pasted_as_one_block_succeeds(tour: TourRun) -> None:
    """The tour's commands, pasted at once, wait for the server and chat with a citation."""
    assert tour.proc is not None and tour.proc.returncode == 0, tour.stdout + tour.stderr
    assert "Catan" in tour.stdout and "Tic-Tac-Toe" in tour.stdout  # the demo games
    answer = tour.stdout[tour.stdout.index(QUESTION) :]
    assert "robber" in answer, answer
    assert "-- stop" in answer, answer
    assert re.search(r"\[p\d+\] Catan rules", answer), answer
    # The banner names a command that exists here and a role that opens /admin.
    assert ".venv/bin/chat-server token --user me --role admin" in tour.stderr, tour.stderr


def test_the_python_snippet_prints_a_streamed_answer(tour: TourRun) -> None:
    """The README's Python snippet runs as written and prints the answer as it streams."""
    assert tour.proc is not None and tour.proc.returncode == 0, tour.stderr
    printed = tour.stdout[tour.stdout.rindex("-- stop") :]
    assert "'type': 'ready'" in printed, printed
    assert "session.ready" in printed, printed
    assert "victory points" in printed, printed  # "How do I win?" from Catan's rules
    completed = printed[printed.index("'type': 'turn.completed'") :]  # printed at the end
    assert "'finish_reason': 'stop'" in completed, printed


def test_another_serve_command_does_not_hide_the_server_from_wait(tour: TourRun) -> None:
    """``./scripts/serve token`` while the server runs, then ``--wait``: still found
    (only the serving command records itself for ``--wait``)."""
    env = env_for(tour.port)
    serving = (tour.clone / ".venv" / ".serve.pid").read_text()
    token = subprocess.run(
        ["./scripts/serve", "token", "--user", "again"],
        cwd=tour.clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr
    # ``--wait`` asks that process whether it is still starting when nothing answers
    assert (tour.clone / ".venv" / ".serve.pid").read_text() == serving
    waited = subprocess.run(
        ["./scripts/serve", "--wait", "10"],
        cwd=tour.clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert waited.returncode == 0, waited.stderr


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)


def get(url: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.url, response.read()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_reference_no_other_host(tour: TourRun, page: str) -> None:
    """``/docs`` and ``/redoc`` load every script and style from the server itself."""
    base = f"http://127.0.0.1:{tour.port}"
    status, _, body = get(base + page)
    assert status == 200
    html = body.decode()
    assert not re.search(r"https?://", html), html
    parser = _References()
    parser.feed(html)
    assert any(u.endswith(".js") for u in parser.urls), parser.urls
    for ref in parser.urls:
        url = urljoin(base + page, ref)
        assert urlsplit(url).netloc == f"127.0.0.1:{tour.port}", ref
        assert get(url)[0] == 200, url


def test_the_printed_address_leads_to_the_docs(tour: TourRun) -> None:
    """``GET /``, the address ``serve`` prints, ends on the API docs, not a 404."""
    status, final, body = get(f"http://127.0.0.1:{tour.port}/")
    assert status == 200
    assert final.endswith("/docs")
    assert b"swagger-ui" in body


def test_waiting_for_a_server_that_could_not_start_fails_fast(clone: Path) -> None:
    """``serve &`` on a port already taken, then ``serve --wait``: both say so, no long wait."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run(
            [
                "bash",
                "-c",
                "./scripts/serve & ./scripts/serve --wait 60; status=$?; wait; exit $status",
            ],
            cwd=clone,
            env=env_for(port),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 1, result.stderr
    assert f"cannot listen on 127.0.0.1 port {port}: address already in use" in result.stderr
    assert "chat-server exited before it answered" in result.stderr
    assert time.monotonic() - started < 30
