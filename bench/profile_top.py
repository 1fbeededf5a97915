"""Read a py-spy ``--format raw`` profile (collapsed stacks) as text: the hot spots.

    python bench/profile_top.py /tmp/chat-bench-profile/profile.txt [--top 25]

Prints, as shares of all samples: the functions where the time is spent (self
time, by ``function (file:line)``), the functions under which it is spent
(inclusive time, by ``function (file)``), and both again for the product's own code
(``chat_server/``, ``http_api/``) only; first, each sample by area (``AREAS``:
Postgres, Redis, the provider request, frames, ...), by its innermost frame in one.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_OURS = ("chat_server/", "http_api/")
_ROOT = str(Path(__file__).resolve().parent.parent) + "/"  # this checkout, any worktree
# Where a sample's CPU goes, by the innermost frame in one of these places (first
# match from the innermost frame outwards): the areas a turn's cost splits into.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Postgres (asyncpg, SQLAlchemy)", ("asyncpg/", "sqlalchemy/", "chat_server/storage/")),
    ("Redis (redis-py)", ("redis/",)),
    ("metrics and telemetry", ("prometheus_client/", "opentelemetry/", "chat_server/telemetry")),
    ("logging", ("logging/", "structlog/", "chat_server/logs.py")),
    ("retrieval ranking (embedding, numpy)", ("wordllama/", "numpy/", "chat_server/retrieval/")),
    (
        "provider request and stream (openai SDK, aiohttp, httpx2)",
        ("openai/", "aiohttp/", "httpx2/", "httpx/", "httpcore", "chat_server/providers/"),
    ),
    (
        "WebSocket frames in and out (uvicorn, our writer)",
        ("uvicorn/protocols/", "websockets/", "chat_server/transports/", "wsproto/"),
    ),
    ("the event loop itself (no handler on the stack)", ("chat_server/cli.py",)),
    ("the turn's bookkeeping (sessions, ws.py, quotas)", ("chat_server/",)),
)


def short(path: str) -> str:
    """A file path as a reader wants it: relative to site-packages or to the project."""
    for marker in ("site-packages/", _ROOT, "/work/main/", "lib/python3.11/"):
        at = path.find(marker)
        if at >= 0:
            return path[at + len(marker) :]
    return path


def parse(text: str) -> list[tuple[list[tuple[str, str, str]], int]]:
    """Each stack (outermost first) as (function, file, line) frames, with its count."""
    stacks = []
    for raw in text.splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part)
            if m:
                frames.append((m["func"], short(m["file"]), m["line"] or ""))
            else:
                frames.append((part, "", ""))
        stacks.append((frames, int(count)))
    return stacks


def ours(file: str) -> bool:
    return file.startswith(_OURS)


def area(frames: list[tuple[str, str, str]]) -> str:
    for _func, file, _line in reversed(frames):
        for name, places in AREAS:
            if file.startswith(places):
                return name
    return "the event loop and the rest (asyncio, uvloop, no place above)"


def summarize(text: str, top: int = 25) -> str:
    stacks = parse(text)
    total = sum(n for _, n in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    self_ours: Counter[str] = Counter()
    incl_ours: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    for frames, n in stacks:
        if not frames:
            continue
        areas[area(frames)] += n
        func, file, line = frames[-1]
        self_time[f"{func} ({file}:{line})"] += n
        # Time in a library called from our code is charged to our last frame too.
        for func, file, line in reversed(frames):
            if ours(file):
                self_ours[f"{func} ({file}:{line})"] += n
                break
        seen: set[str] = set()
        for func, file, _line in frames:
            key = f"{func} ({file})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
                if ours(file):
                    incl_ours[key] += n

    def block(title: str, counts: Counter[str]) -> list[str]:
        lines = [f"\n{title}"]
        for key, n in counts.most_common(top):
            lines.append(f"  {100 * n / total:5.1f}%  {key}")
        return lines

    out = [f"{total} samples"]
    out += block("by area (innermost frame in a known place)", areas)
    out += block("self time (where the CPU is)", self_time)
    out += block("inclusive time by function", inclusive)
    out += block("our code, self + libraries it calls (by our innermost frame)", self_ours)
    out += block("our code, inclusive", incl_ours)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(summarize(Path(args.path).read_text(), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
