"""The reconnect storm's clients (issue 21, target 3), in their own process.

``python bench/stormclient.py '<json config>'``, driven by ``storm.py`` over its
stdin and stdout:

1. N clients connect to instance A (``Authorization: Bearer``, a token per user),
   start a session and ask one short question (so each session has a history of two
   messages and a quota count); then it prints ``ATTACHED {...}`` and waits for a line
   on stdin (the parent reads the database's counters meanwhile).
2. It sends A SIGTERM. A drains and closes every connection with 1012; each client,
   once closed, waits a random 0 to ``jitter_s`` seconds, then connects to instance B
   and, after ``ready``, sends ``session.resume`` for its session.
   A connection B refuses at its door (``503``, ``HTTP_MAX_PENDING``) is tried again
   after 1 s plus the jitter, as its ``retry-after`` asks; those are counted apart.
3. It prints ``RESULT {...}``: per client the time from starting the reconnect (the
   first TCP connect to B) to ``session.ready`` and from sending ``session.resume`` to it;
   errors by kind (an ``error`` frame, a failed connect, a timeout, a close other than
   1012, a history that is not the one asked on A); B's CPU over the storm.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import resource
import signal
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from loadclient import Agent, close_all, cpu_seconds, open_all, quantile
from wsproto_client import WSClient

TIMEOUT_S = 60.0  # one client's reconnect, at most
RESTART = 1012


class Reconnect:
    """One client's way from A's close to B's ``session.ready``."""

    __slots__ = (
        "close_code",
        "closed_at",
        "connect_at",
        "failed",
        "ready_at",
        "refused",
        "resume_at",
    )

    def __init__(self) -> None:
        self.close_code: int | None = None
        self.closed_at = self.connect_at = self.resume_at = self.ready_at = 0.0
        self.failed: str | None = None
        self.refused = 0  # 503s at B's door before getting in


async def reconnect(agent: Agent, url: str, jitter: float, rec: Reconnect) -> None:
    """Wait for A's close, then the jitter; resume the agent's session on B."""
    assert agent.ws is not None and agent.session_id is not None
    rec.close_code = await agent.ws.closed
    rec.closed_at = time.perf_counter()
    if rec.close_code != RESTART:
        agent.errors[f"a_closed_{rec.close_code}"] += 1
    await asyncio.sleep(random.uniform(0.0, jitter))
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    rec.connect_at = time.perf_counter()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                agent.control = asyncio.Queue(maxsize=1000)
                headers = {"Authorization": f"Bearer {agent.token}"}
                ws = WSClient(parts.netloc, parts.path, headers, agent.on_text)
                await loop.create_connection(lambda: ws, host, port)  # noqa: B023
                try:
                    await ws.opened
                    break
                except ConnectionError as exc:
                    if " 503 " not in str(exc):
                        raise
                # Refused at the door (HTTP_MAX_PENDING): as a client does, try again
                # after its retry-after (1 s), spread by the jitter.
                rec.refused += 1
                await asyncio.sleep(1.0 + random.uniform(0.0, jitter))
            agent.ws = ws
            await agent.expect("ready", TIMEOUT_S)
            rec.resume_at = time.perf_counter()
            ws.send_text(json.dumps({"type": "session.resume", "session_id": agent.session_id}))
            ready = await agent.expect("session.ready", TIMEOUT_S)
            rec.ready_at = time.perf_counter()
    except (OSError, TimeoutError) as exc:
        rec.failed = f"b_{type(exc).__name__}"
        agent.errors[rec.failed] += 1
        return
    history = ready.get("history") or []
    if ready["session"]["id"] != agent.session_id or [m.get("status") for m in history] != [
        "complete",
        "complete",
    ]:
        rec.failed = "history_mismatch"
        agent.errors[rec.failed] += 1


async def storm(cfg: dict[str, Any]) -> dict[str, Any]:
    errors: Counter[str] = Counter()
    n = int(cfg["clients"])
    agents = [Agent(i, cfg, errors) for i in range(n)]
    t_attach = time.perf_counter()
    await open_all(agents, cfg, errors)
    gate = asyncio.Semaphore(int(cfg.get("turn_concurrency", 50)))

    async def ask(agent: Agent) -> None:
        async with gate:
            await agent.ask(int(cfg.get("tokens", 4)), 0.0, 0.0)

    attached = [a for a in agents if a.ws is not None and a.session_id]
    await asyncio.gather(*(ask(a) for a in attached))
    asked = [a for a in attached if a.turns and a.turns[-1].reason == "stop"]
    attach_errors = dict(errors)
    print(
        "ATTACHED "
        + json.dumps(
            {
                "attached": len(asked),
                "seconds": time.perf_counter() - t_attach,
                "errors": attach_errors,
            }
        ),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    errors.clear()
    b_pid = int(cfg["b_pid"])
    recs = [Reconnect() for _ in asked]
    cpu0, own0, t0 = cpu_seconds(b_pid), time.process_time(), time.perf_counter()
    os.kill(int(cfg["a_pid"]), signal.SIGTERM)
    jitter = float(cfg.get("jitter_s", 1.0))
    await asyncio.gather(
        *(reconnect(a, cfg["b_url"], jitter, r) for a, r in zip(asked, recs, strict=True))
    )
    cpu1, own1, t1 = cpu_seconds(b_pid), time.process_time(), time.perf_counter()
    done = [r for r in recs if r.ready_at and r.failed is None]
    total = [(r.ready_at - r.connect_at) * 1000 for r in done]
    resume = [(r.ready_at - r.resume_at) * 1000 for r in done]
    handshake = [(r.resume_at - r.connect_at) * 1000 for r in done]
    first = min((r.connect_at for r in recs if r.connect_at), default=t0)
    last = max((r.ready_at for r in done), default=t1)
    closes = Counter(str(r.close_code) for r in recs)
    await close_all(asked)
    return {
        "clients": n,
        "attached": len(asked),
        "attach_errors": attach_errors,
        "resumed": len(done),
        "errors": dict(errors),
        "a_closes": dict(closes),
        "refused_503": sum(r.refused for r in recs),
        "clients_refused": sum(1 for r in recs if r.refused),
        "first_try_ms": {
            q: quantile([t for t, r in zip(total, done, strict=True) if not r.refused], v)
            for q, v in (("p50", 0.5), ("p99", 0.99))
        },
        "reconnect_ms": {
            q: quantile(total, v) for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
        },
        "resume_ms": {
            q: quantile(resume, v) for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
        },
        "handshake_ms": {q: quantile(handshake, v) for q, v in (("p50", 0.5), ("p99", 0.99))},
        "closed_over_s": max((r.closed_at for r in recs), default=t0) - t0,
        "storm_s": last - first,
        "b_cpu_s": cpu1 - cpu0,
        "b_cpu_ms_per_resume": (cpu1 - cpu0) * 1000 / len(done) if done else None,
        "b_busy": (cpu1 - cpu0) / max(1e-9, t1 - t0),
        "load_cpu_s": own1 - own0,
        "window_s": t1 - t0,
    }


def main(argv: list[str]) -> int:
    gc.disable()  # as loadclient.py: no collector pause passing for the server's
    cfg = json.loads(argv[1])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        result = uvloop.run(storm(cfg))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        result = asyncio.run(storm(cfg))
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
