"""The load client: K WebSocket clients speaking our protocol, in their own process.

``python bench/loadclient.py '<json config>'`` prints one ``RESULT {...}`` line.

Stream mode: every client connects (``Authorization: Bearer`` with a token minted for
its own user id), sends ``session.start``, then runs ``turns`` turns of ``message`` →
``turn.delta``… → ``turn.completed``. Client ``i`` starts ``i/K`` of an answer's
duration late, so streams are spread evenly; the measured window is the steady part
(from one answer's duration after the start to ``turns`` durations), when every
client is streaming. Per turn it records the first-token latency (from sending
``message`` to the first ``turn.delta``, minus the upstream's own first-token delay)
and the gaps between deltas; server and load CPU are read from ``/proc`` at the
window's edges.

Lockstep mode (issue 21's bursts): every client sends ``message`` at the same instant,
round after round; first-token latency per turn and the server's CPU per turn.

Followers (``follow_urls``): each client's session is also followed by one more
connection per URL (another instance, or the same), which resumes it and only reads;
the text they receive counts as delivered too, and ``server_pids`` adds those
instances' CPU to the server's (CPU per delivered token, issue 18).

Idle mode: C clients connect, start a session and run one short turn (a bounded
number at a time), then stay idle; the server's VmRSS is read before and after.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import resource
import signal
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from wsproto_client import WSClient

TOKEN_CHARS = 4
CLK_TCK = os.sysconf("SC_CLK_TCK")
QUESTION = "How do I win, and when do I roll the dice to build a settlement?"


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of ``pid`` from /proc/<pid>/stat, in seconds."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cores_busy() -> list[float]:
    """Busy seconds of each core (everything but idle and iowait), from /proc/stat."""
    busy = []
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith("cpu") and line[3].isdigit():
                ticks = [int(v) for v in line.split()[1:]]
                busy.append((sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK)
    return busy


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


class TurnRec:
    __slots__ = (
        "chars",
        "done",
        "first",
        "reason",
        "sent",
        "server_first",
        "started",
        "times",
        "widths",
    )

    def __init__(self, sent: float, done: asyncio.Future[None]) -> None:
        self.sent = sent
        self.first: float | None = None
        self.started: float | None = None  # when turn.started arrived
        self.times: list[float] = []
        self.widths: list[int] = []
        self.chars = 0
        self.reason: str | None = None
        self.server_first: float | None = None  # the product's own timing.first_token_ms
        self.done = done


class Agent:
    """One client connection and its turns."""

    def __init__(self, index: int, cfg: dict[str, Any], errors: Counter[str]) -> None:
        self.index = index
        self.cfg = cfg
        self.errors = errors
        self.ws: WSClient | None = None
        self.turn: TurnRec | None = None
        self.turns: list[TurnRec] = []
        self.control: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self.session_id: str | None = None
        self.token: str | None = None

    def on_text(self, payload: bytes, now: float) -> None:
        msg = json.loads(payload)
        kind = msg.get("type")
        turn = self.turn
        if self.cfg.get("protocol") == "ai-sdk":
            self.on_ai_sdk(msg, kind, turn, now)
            return
        if kind == "turn.delta":
            if turn is not None:
                if turn.first is None:
                    turn.first = now
                width = len(msg.get("text") or "")
                turn.times.append(now)
                turn.widths.append(width)
                turn.chars += width
            return
        if kind == "turn.completed" and turn is not None:
            turn.reason = msg.get("finish_reason")
            timing = msg.get("timing")
            if isinstance(timing, dict):
                turn.server_first = timing.get("first_token_ms")
            if turn.reason != "stop":
                self.errors[f"finish_{turn.reason}"] += 1
            if not turn.done.done():
                turn.done.set_result(None)
            return
        if kind == "error":
            self.errors[str(msg.get("code"))] += 1
            if turn is not None and not msg.get("turn_id") and not turn.done.done():
                turn.reason = "refused"
                turn.done.set_result(None)
            return
        if kind == "turn.started":
            if turn is not None:
                turn.started = now
            return
        if kind == "pong":
            return
        if not self.control.full():
            self.control.put_nowait(msg)

    def on_ai_sdk(self, msg: dict[str, Any], kind: Any, turn: TurnRec | None, now: float) -> None:
        """``/ws/ai-sdk``: ``chunk`` frames carry the UI message chunks of the answer."""
        if kind == "chunk":
            chunk = msg.get("chunk") or {}
            if turn is None:
                return
            ctype = chunk.get("type")
            if ctype == "text-delta":
                if turn.first is None:
                    turn.first = now
                width = len(chunk.get("delta") or "")
                turn.times.append(now)
                turn.widths.append(width)
                turn.chars += width
            elif ctype == "start":
                turn.started = now
            elif ctype == "finish":
                turn.reason = chunk.get("finishReason")
                if turn.reason != "stop":
                    self.errors[f"finish_{turn.reason}"] += 1
            return
        if kind in ("end", "error") and turn is not None:
            if kind == "error":
                self.errors[str(msg.get("errorText", "")).split(":", 1)[0]] += 1
                turn.reason = "refused"
            if not turn.done.done():
                turn.done.set_result(None)

    def ai_sdk_send(self, text: str) -> dict[str, Any]:
        """A ``WebSocketChatTransport`` ``send`` (only the question: the server keeps history)."""
        n = len(self.turns)
        parts = [{"type": "text", "text": text}]
        return {
            "type": "send",
            "requestId": f"r{n}",
            "id": f"{self.cfg['user_prefix']}chat{self.index}",
            "trigger": "submit-message",
            "messages": [{"id": f"q{n}", "role": "user", "parts": parts}],
            "headers": {},
            "body": {"game_id": self.cfg["game_id"]},
        }

    async def expect(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.control.get()
                if msg.get("type") == kind:
                    return msg

    async def open(self, token: str | None) -> None:
        url = urlsplit(self.cfg["url"])
        loop = asyncio.get_running_loop()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = WSClient(
            url.netloc, url.path, headers, self.on_text, deflate=bool(self.cfg.get("deflate"))
        )
        async with asyncio.timeout(30.0):
            await loop.create_connection(lambda: ws, url.hostname, url.port)
            await ws.opened
        self.ws = ws
        self.token = token
        if self.cfg.get("protocol") == "ai-sdk":
            # No handshake frames: a chat is created by its first request. Ask a
            # one-token question now, as /ws/chat clients send session.start here:
            # the session's creation stays out of the measured window.
            await self.ask(1, 0.0, 0.0)
            self.turns.clear()
            return
        await self.expect("ready")
        ws.send_text(json.dumps({"type": "session.start", "game_id": self.cfg["game_id"]}))
        self.session_id = (await self.expect("session.ready"))["session"]["id"]

    async def follow(self, url: str, token: str | None, session_id: str) -> None:
        """Open a connection to ``url`` that follows ``session_id`` (reads only)."""
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ws = WSClient(parts.netloc, parts.path, headers, self.on_follower_text, deflate=False)
        self.turn = TurnRec(time.perf_counter(), loop.create_future())
        self.turns.append(self.turn)
        async with asyncio.timeout(30.0):
            await loop.create_connection(lambda: ws, parts.hostname, parts.port)
            await ws.opened
        self.ws = ws
        await self.expect("ready")
        ws.send_text(json.dumps({"type": "session.resume", "session_id": session_id}))
        await self.expect("session.ready")

    def on_follower_text(self, payload: bytes, now: float) -> None:
        """A follower records every delta it gets, whichever turn it belongs to."""
        msg = json.loads(payload)
        kind = msg.get("type")
        if kind == "turn.delta" and self.turn is not None:
            width = len(msg.get("text") or "")
            self.turn.times.append(now)
            self.turn.widths.append(width)
            self.turn.chars += width
        elif kind in ("ready", "session.ready") and not self.control.full():
            self.control.put_nowait(msg)
        elif kind == "error":
            self.errors[f"follower_{msg.get('code')}"] += 1

    async def ask(self, tokens: int, gap_ms: float, first_ms: float) -> TurnRec:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        text = f"{QUESTION} [bench tokens={tokens} gap_ms={gap_ms:g} first_ms={first_ms:g}]"
        turn = TurnRec(time.perf_counter(), loop.create_future())
        self.turn = turn
        self.turns.append(turn)
        if self.cfg.get("protocol") == "ai-sdk":
            self.ws.send_text(json.dumps(self.ai_sdk_send(text)))
        else:
            self.ws.send_text(json.dumps({"type": "message", "text": text}))
        budget = 30.0 + 3 * (first_ms + tokens * gap_ms) / 1000
        try:
            async with asyncio.timeout(budget):
                await turn.done
        except TimeoutError:
            self.errors["turn_timeout"] += 1
            turn.reason = "timeout"
        finally:
            self.turn = None
        return turn


class Sampler:
    """CPU of the server, the upstream and this process at chosen instants."""

    def __init__(
        self, server_pid: int, upstream_pid: int | None, more: list[int] | None = None
    ) -> None:
        self.server_pid, self.upstream_pid = server_pid, upstream_pid
        self.more = more or []  # other instances (followers'), LiteLLM's proxy

    def sample(self) -> dict[str, Any]:
        return {
            "t": time.perf_counter(),
            "server": cpu_seconds(self.server_pid) + sum(cpu_seconds(p) for p in self.more),
            "load": cpu_seconds(self.upstream_pid) + time.process_time(),
            "cores": cores_busy(),
        }


def others(s0: dict[str, Any], s1: dict[str, Any], server_core: int, load_core: int) -> float:
    """Share of the two bench cores used by anything but the server and the load."""
    window = max(1e-9, s1["t"] - s0["t"])
    c0, c1 = s0.get("cores") or [], s1.get("cores") or []
    if len(c0) <= max(server_core, load_core) or len(c1) != len(c0):
        return 0.0
    used = sum(c1[i] - c0[i] for i in (server_core, load_core))
    ours = (s1["server"] - s0["server"]) + (s1["load"] - s0["load"])
    return max(0.0, used - ours) / window


async def open_all(agents: list[Agent], cfg: dict[str, Any], errors: Counter[str]) -> None:
    secret = cfg.get("secret")
    mint = None
    if secret:
        from chat_server.auth import mint_token

        mint = mint_token
    gate = asyncio.Semaphore(int(cfg.get("connect_concurrency", 100)))

    async def one(agent: Agent) -> None:
        token = None
        if mint is not None:
            user = f"{cfg.get('user_prefix', 'bench-user-')}{agent.index}"
            token = mint(secret=str(secret), user_id=user, role="basic", ttl=4 * 3600)
        async with gate:
            try:
                await agent.open(token)
            except (OSError, TimeoutError) as exc:
                errors[f"connect_{type(exc).__name__}"] += 1
                agent.ws = None

    await asyncio.gather(*(one(a) for a in agents))


async def close_all(agents: list[Agent]) -> None:
    live = [a.ws for a in agents if a.ws is not None]
    for ws in live:
        ws.close()
    pending = [ws.closed for ws in live if not ws.closed.done()]
    if pending:
        await asyncio.wait(pending, timeout=10.0)
    for ws in live:
        ws.close_now()


async def stream_mode(cfg: dict[str, Any]) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    k, m = int(cfg["clients"]), int(cfg["turns"])
    n, gap, first = int(cfg["tokens"]), float(cfg["gap_ms"]), float(cfg.get("first_ms", 0))
    agents = [Agent(i, cfg, errors) for i in range(k)]
    sampler = Sampler(int(cfg["server_pid"]), cfg.get("upstream_pid"), cfg.get("server_pids"))
    await open_all(agents, cfg, errors)
    ready = [a for a in agents if a.ws is not None]
    followers: list[Agent] = []
    for url in cfg.get("follow_urls") or []:
        for agent in ready:
            follower = Agent(agent.index, cfg, errors)
            try:
                assert agent.session_id is not None
                await follower.follow(url, agent.token, agent.session_id)
            except (OSError, TimeoutError) as exc:
                errors[f"follow_{type(exc).__name__}"] += 1
                continue
            followers.append(follower)
    dur = (first + n * gap) / 1000
    stagger = bool(cfg.get("stagger", True)) and k > 1
    go = time.perf_counter()
    steady = stagger and m >= 2 and dur > 0
    start_at, end_at = (go + dur, go + m * dur) if steady else (go, math.inf)
    samples: list[dict[str, Any]] = []

    async def sampler_task() -> None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        samples.append(sampler.sample())
        if end_at < math.inf:
            await asyncio.sleep(max(0.0, end_at - time.perf_counter()))
            samples.append(sampler.sample())

    async def run(agent: Agent) -> None:
        if stagger:
            await asyncio.sleep(dur * agent.index / k)
        for _ in range(m):
            turn = await agent.ask(n, gap, first)
            if turn.reason in ("timeout", "refused") and agent.ws and agent.ws.closed.done():
                return

    task = asyncio.create_task(sampler_task())
    await asyncio.gather(*(run(a) for a in ready))
    if len(samples) < 2:
        task.cancel()
        samples.append(sampler.sample())
        if len(samples) < 2:
            samples.insert(0, {"t": go, "server": samples[0]["server"], "load": 0.0, "cores": []})
    await close_all(agents + followers)
    t0, t1 = samples[0]["t"], samples[1]["t"]
    followed = [t for f in followers for t in f.turns]
    follower_chars = sum(
        w for t in followed for tt, w in zip(t.times, t.widths, strict=True) if t0 <= tt <= t1
    )
    turns = [t for a in agents for t in a.turns]
    chars = sum(w for t in turns for tt, w in zip(t.times, t.widths, strict=True) if t0 <= tt <= t1)
    gaps = [(b - a) * 1000 for t in turns for a, b in zip(t.times, t.times[1:], strict=False)]
    firsts = [(t.first - t.sent) * 1000 - first for t in turns if t.first is not None]
    stalls = stall_events(turns, go)
    window = max(1e-9, t1 - t0)
    tokens = chars / TOKEN_CHARS
    server_cpu = samples[1]["server"] - samples[0]["server"]
    return {
        "clients": k,
        "connected": len(ready),
        "turns": len(turns),
        "turns_ok": sum(1 for t in turns if t.reason == "stop"),
        "deltas": sum(len(t.times) for t in turns),
        "tokens_total": sum(t.chars for t in turns) / TOKEN_CHARS,
        "window_s": window,
        "tokens_window": tokens,
        "tokens_per_s": tokens / window,
        "server_cpu_s": server_cpu,
        "server_cpu_per_1k": server_cpu / tokens * 1000 if tokens else None,
        "followers": len(followers),
        "follower_tokens_window": follower_chars / TOKEN_CHARS,
        # every connection's text counts: the asker's and each follower's
        "server_cpu_per_1k_delivered": (
            server_cpu / (tokens + follower_chars / TOKEN_CHARS) * 1000 if tokens else None
        ),
        "server_busy": server_cpu / window,
        "load_busy": (samples[1]["load"] - samples[0]["load"]) / window,
        "others_busy": others(samples[0], samples[1], 0, 1),
        "first_ms_p50": quantile(firsts, 0.50),
        "first_ms_p99": quantile(firsts, 0.99),
        "first_ms_n": len(firsts),
        "first_ms_each": [round(v, 2) for v in firsts[:200]],
        # send -> turn.started: the checks and writes before the provider is called
        "started_ms_p50": quantile(
            [(t.started - t.sent) * 1000 for t in turns if t.started is not None], 0.5
        ),
        "gap_ms_p50": quantile(gaps, 0.50),
        "gap_ms_p99": quantile(gaps, 0.99),
        "gap_ms_max": max(gaps) if gaps else None,
        "stalls": stalls,
        "go": go,  # perf_counter (CLOCK_MONOTONIC): comparable with the server's GC log
        "server_first_ms_p50": quantile([t.server_first for t in turns if t.server_first], 0.5),
        "errors": dict(errors),
    }


def stall_events(turns: list[TurnRec], go: float, limit_ms: float = 50.0) -> list[list[float]]:
    """Gaps over ``limit_ms`` grouped by when they ended (within 10 ms of each other).

    Many streams stalling at the same instant is the server's event loop (or its core)
    stopping; one stream alone is that stream. Each item: [seconds after the start,
    longest gap ms, streams hit], at most 50.
    """
    ends = sorted(
        (b, (b - a) * 1000)
        for t in turns
        for a, b in zip(t.times, t.times[1:], strict=False)
        if (b - a) * 1000 > limit_ms
    )
    events: list[list[float]] = []
    for end, gap in ends:
        if events and end - go - events[-1][0] <= 0.010:
            events[-1][1] = max(events[-1][1], round(gap, 1))
            events[-1][2] += 1
        else:
            events.append([end - go, round(gap, 1), 1])
    for event in events:
        event[0] = round(event[0], 3)
    return events[:50]


async def lockstep_mode(cfg: dict[str, Any]) -> dict[str, Any]:
    """Bursts: every client sends ``message`` at the same instant, round after round.

    A round starts when the previous one has ended (every answer complete) and at
    least ``period_ms`` after the previous round's start (a connection may send 20
    frames a second). The first token's latency counts every round; the CPU window
    leaves out the first round (a new user's first turn pays for its quota key and
    caches once), so CPU per turn is what a turn costs at a steady burst rate.
    """
    errors: Counter[str] = Counter()
    k, rounds = int(cfg["clients"]), int(cfg["rounds"])
    n, gap = int(cfg["tokens"]), float(cfg["gap_ms"])
    period = float(cfg.get("period_ms", 100.0)) / 1000
    agents = [Agent(i, cfg, errors) for i in range(k)]
    sampler = Sampler(int(cfg["server_pid"]), cfg.get("upstream_pid"), cfg.get("server_pids"))
    await open_all(agents, cfg, errors)
    ready = [a for a in agents if a.ws is not None]
    skip = 1 if rounds >= 3 else 0
    samples: list[dict[str, Any]] = []
    round_ms: list[float] = []
    go = time.perf_counter()
    # ``seconds`` (the profiler's runs): keep going, round after round, that long.
    until = go + float(cfg.get("seconds", 0))
    index = 0
    while index < rounds or time.perf_counter() < until:
        if index == skip:
            samples.append(sampler.sample())
        start = time.perf_counter()
        await asyncio.gather(*(a.ask(n, gap, 0.0) for a in ready))
        round_ms.append((time.perf_counter() - start) * 1000)
        index += 1
        await asyncio.sleep(max(0.0, start + period - time.perf_counter()))
    samples.append(sampler.sample())
    await close_all(agents)
    s0, s1 = samples[0], samples[-1]
    window = max(1e-9, s1["t"] - s0["t"])
    turns = [t for a in agents for t in a.turns]
    counted = [t for a in ready for t in a.turns[skip:]]
    firsts = [(t.first - t.sent) * 1000 for t in turns if t.first is not None]
    server_cpu = s1["server"] - s0["server"]
    gaps = [(b - a) * 1000 for t in turns for a, b in zip(t.times, t.times[1:], strict=False)]
    return {
        "clients": k,
        "connected": len(ready),
        "rounds": index,
        "tokens": n,
        "turns": len(turns),
        "turns_ok": sum(1 for t in turns if t.reason == "stop"),
        "turns_window": len(counted),
        "window_s": window,
        "turns_per_s": len(counted) / window,
        "tokens_total": sum(t.chars for t in turns) / TOKEN_CHARS,
        "server_cpu_s": server_cpu,
        "server_cpu_ms_per_turn": server_cpu / len(counted) * 1000 if counted else None,
        "server_busy": server_cpu / window,
        "load_busy": (s1["load"] - s0["load"]) / window,
        "others_busy": others(s0, s1, 0, 1),
        "first_ms_p50": quantile(firsts, 0.50),
        "first_ms_p99": quantile(firsts, 0.99),
        "first_ms_max": max(firsts) if firsts else None,
        "first_ms_n": len(firsts),
        "first_ms_each": [round(v, 2) for v in firsts[:300]],
        "started_ms_p50": quantile(
            [(t.started - t.sent) * 1000 for t in turns if t.started is not None], 0.5
        ),
        "started_ms_p99": quantile(
            [(t.started - t.sent) * 1000 for t in turns if t.started is not None], 0.99
        ),
        "gap_ms_p99": quantile(gaps, 0.99),
        "round_ms": [round(v, 1) for v in round_ms],
        "go": go,
        "server_first_ms_p50": quantile([t.server_first for t in turns if t.server_first], 0.5),
        "errors": dict(errors),
    }


async def idle_mode(cfg: dict[str, Any]) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    pid = int(cfg["server_pid"])
    c = int(cfg["clients"])
    agents = [Agent(i, cfg, errors) for i in range(c)]
    base = rss_kb(pid)
    await open_all(agents, cfg, errors)
    ready = [a for a in agents if a.ws is not None]
    connected = rss_kb(pid)
    gate = asyncio.Semaphore(int(cfg.get("turn_concurrency", 50)))

    async def one(agent: Agent) -> None:
        async with gate:
            await agent.ask(int(cfg.get("tokens", 20)), 0.0, 0.0)

    await asyncio.gather(*(one(a) for a in ready))
    await asyncio.sleep(float(cfg.get("settle_s", 2.0)))
    used = rss_kb(pid)
    alive = sum(1 for a in ready if a.ws is not None and not a.ws.closed.done())
    probe = cfg.get("memprobe_out")
    if probe:  # bench/memprobe.py: compare allocations now, with every connection open
        os.kill(pid, signal.SIGUSR2)
        for _ in range(600):
            if os.path.exists(probe):  # noqa: ASYNC240 - one local stat per half second
                break
            await asyncio.sleep(0.5)
    await close_all(agents)
    return {
        "clients": c,
        "connected": len(ready),
        "alive": alive,
        "turns_ok": sum(1 for a in ready for t in a.turns if t.reason == "stop"),
        "rss_base_kb": base,
        "rss_connected_kb": connected,
        "rss_used_kb": used,
        "rss_per_conn_kb": (used - base) / alive if alive else None,
        "rss_per_fresh_conn_kb": (connected - base) / len(ready) if ready else None,
        "errors": dict(errors),
    }


async def main_async(cfg: dict[str, Any]) -> dict[str, Any]:
    async with asyncio.timeout(float(cfg.get("timeout_s", 600))):
        if cfg.get("mode") == "idle":
            return await idle_mode(cfg)
        if cfg.get("mode") == "lockstep":
            return await lockstep_mode(cfg)
        return await stream_mode(cfg)


def main(argv: list[str]) -> int:
    # A collection here would stall every stream at once and pass for a server stall;
    # this process lives for one scenario, so it runs without the cycle collector.
    gc.disable()
    cfg = json.loads(argv[1])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        result = uvloop.run(main_async(cfg))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        result = asyncio.run(main_async(cfg))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
