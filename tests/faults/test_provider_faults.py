"""Providers that stall, drop, send garbage or refuse: each turn ends with the contract's
code within the configured timeouts, and after 1,000 such turns nothing has leaked (tasks,
running turns, connections, upstream connections, Redis reservations)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from tests.private_redis import private_redis
from tests.server import RunningServer, make_settings, running_server
from tests.upstreams import (
    AnthropicUpstream,
    GeminiUpstream,
    OpenAIUpstream,
    RecordedRequest,
    Script,
    Upstream,
)
from tests.wsclient import ws_client

from .support import first_game, metric, open_chat, scaled

pytestmark = pytest.mark.faults

# Wide enough for a healthy turn on a loaded CI machine (at 0.3 s one turn more than
# expected once ended in error there, which of them unknown), well under STALL.
FIRST_TOKEN_TIMEOUT = 0.5
IDLE_TIMEOUT = 0.5
STALL = 1.5  # longer than either timeout
SLACK = 1.0  # scheduling on a loaded machine
CLIENT_BOUND = 8.0  # no hang: whatever the fault, the client hears the end within this


@dataclass(frozen=True)
class Fault:
    script: Script
    code: str | None  # the error frame's code; None: the turn succeeds
    streams: bool  # the client sees text before the end


TOKENS = ["alpha ", "beta ", "gamma ", "delta "]
UNAVAILABLE, ERROR = "provider_unavailable", "provider_error"
FAULTS: dict[str, Fault] = {
    "stall-first": Fault(Script(tokens=TOKENS, first_token_delay=STALL), UNAVAILABLE, False),
    "stall-mid": Fault(Script(tokens=TOKENS, token_delay=STALL), UNAVAILABLE, True),
    "drop-first": Fault(Script(tokens=TOKENS, drop_after=0), UNAVAILABLE, False),
    "drop-mid": Fault(Script(tokens=TOKENS, drop_after=2), UNAVAILABLE, True),
    "garbage-first": Fault(Script(tokens=TOKENS, garbage_after=0), ERROR, False),
    "garbage-mid": Fault(Script(tokens=TOKENS, garbage_after=2), ERROR, True),
    "429": Fault(Script(tokens=TOKENS, fail_status=429), UNAVAILABLE, False),
    "503": Fault(Script(tokens=TOKENS, fail_status=503), UNAVAILABLE, False),
    "500": Fault(Script(tokens=TOKENS, fail_status=500), ERROR, False),
    "healthy": Fault(Script(tokens=TOKENS), None, True),
}


def marker(kind: str) -> str:
    return f"[fault {kind}]"


class Faulty:
    """Mixed into an upstream: each request gets the script its question names."""

    script: Script

    async def _respond(self, conn: Any, req: RecordedRequest) -> bool:
        body = json.dumps(req.body)
        for kind, fault in FAULTS.items():
            if marker(kind) in body:
                self.script = fault.script  # read by the base class before its first await
                break
        return await super()._respond(conn, req)  # type: ignore[misc]


class FaultyOpenAI(Faulty, OpenAIUpstream):
    pass


class FaultyAnthropic(Faulty, AnthropicUpstream):
    pass


class FaultyGemini(Faulty, GeminiUpstream):
    pass


def fault_settings(tmp_path: Path, **extra: Any) -> Any:
    return make_settings(
        tmp_path,
        provider_first_token_timeout=FIRST_TOKEN_TIMEOUT,
        provider_idle_timeout=IDLE_TIMEOUT,
        history_turns=0,  # each request holds only its own question (and its marker)
        ws_max_frames_per_second=1000,
        ws_frame_burst=1000,
        **extra,
    )


@dataclass
class Outcome:
    kind: str
    frames: list[dict[str, Any]]
    seconds: float

    @property
    def streamed(self) -> bool:
        return any(f["type"] == "turn.delta" for f in self.frames)

    @property
    def error(self) -> dict[str, Any] | None:
        errors = [f for f in self.frames if f["type"] == "error"]
        return errors[0] if errors else None

    @property
    def error_code(self) -> str | None:
        return self.error["code"] if self.error else None

    @property
    def timed_out(self) -> bool:
        """Our own timeout fired (the message says so): on a loaded machine even a fast
        fault can take longer than the first-token timeout to reach us."""
        error = self.error
        if error is None:
            return False
        return bool(error["code"] == UNAVAILABLE and "sent nothing" in error["message"])


def check(outcome: Outcome) -> None:
    fault = FAULTS[outcome.kind]
    kinds = [f["type"] for f in outcome.frames]
    assert kinds[0] == "turn.started" and kinds[-1] == "turn.completed", kinds
    if outcome.error_code != fault.code:
        # the only other right answer: the provider was too slow and we said so
        assert fault.code is not None and outcome.timed_out, (outcome.kind, outcome.frames)
    elif not outcome.timed_out:
        assert outcome.streamed == fault.streams, (outcome.kind, kinds)
    finish = outcome.frames[-1]["finish_reason"]
    assert finish == ("stop" if fault.code is None else "error"), (outcome.kind, finish)
    # The turn's own time (the server's clock) is bounded by the configured timeouts;
    # what the client waits on top of it is storage and scheduling under load.
    own = outcome.frames[-1]["timing"]["total_ms"] / 1000
    assert own < FIRST_TOKEN_TIMEOUT + IDLE_TIMEOUT + SLACK, (outcome.kind, own)
    assert outcome.seconds < CLIENT_BOUND, (outcome.kind, outcome.seconds)


async def run_client(
    server: RunningServer, user: str, game: str, kinds: list[str]
) -> list[Outcome]:
    """One user, one connection, one session: ``kinds`` turns one after the other."""
    outcomes = []
    async with ws_client(server.ws_url, server.token(user)) as client:
        await client.start(game, provider="openai")
        for kind in kinds:
            started = time.monotonic()
            await client.send({"type": "message", "text": f"How do I win? {marker(kind)}"})
            frames = await client.until("turn.completed", timeout=10)
            outcomes.append(Outcome(kind, frames, time.monotonic() - started))
    return outcomes


async def settle(probe: Any, want: Any, timeout: float = 10.0) -> Any:
    """Poll ``probe()`` until it returns ``want`` (or the time is up); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value == want or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_a_thousand_faulty_turns_end_right_and_leak_nothing(tmp_path: Path) -> None:
    """1,000 turns against stalling, dropping, garbled and refusing providers: each ends
    with its code in time; afterwards no running turn, task, connection or reservation is
    left, and exactly the turns that streamed text are counted."""
    total, clients = scaled(1000, minimum=len(FAULTS)), 20
    kinds = [list(FAULTS)[i % len(FAULTS)] for i in range(total)]
    with FaultyOpenAI() as upstream, private_redis(tmp_path) as redis:
        settings = fault_settings(
            tmp_path,
            openai_api_key="sk-test",
            openai_base_url=upstream.base_url,
            redis_url=redis.url,
        )
        with running_server(settings) as server:
            await open_chat(server.url, server.token("root", "admin"))
            game = await first_game(server.url, server.token())
            loop_tasks = await _tasks(server)
            errors_before = await metric(server.url, "chat_turns_total", finish_reason="error")
            started = time.monotonic()
            async with asyncio.timeout(120):
                per_client = await asyncio.gather(
                    *(
                        run_client(server, f"fault-user-{c}", game, kinds[c::clients])
                        for c in range(clients)
                    )
                )
            elapsed = time.monotonic() - started
            outcomes = [o for batch in per_client for o in batch]
            for outcome in outcomes:
                check(outcome)
            errors = await metric(server.url, "chat_turns_total", finish_reason="error")
            failed = sum(o.error_code is not None for o in outcomes)
            assert errors - errors_before == failed  # the dashboards count them all

            assert await settle(lambda: _call(server, _running(server)), 0) == 0
            assert await settle(lambda: _call(server, _connections(server)), 0) == 0
            left = await settle(lambda: _tasks(server), loop_tasks)
            assert left <= loop_tasks, f"{left - loop_tasks} tasks leaked"
            await asyncio.sleep(STALL)  # the upstream's own sleeps end
            assert upstream.open_connections <= clients

            client = Redis.from_url(redis.url, socket_timeout=2)
            try:
                keys = await client.keys("chat:quota:*")
                counted = sum([await client.scard(k) for k in keys])
            finally:
                await client.aclose()
    streamed = sum(o.streamed for o in outcomes)
    refunded = total - streamed
    print(
        f"\nprovider faults: {total} turns in {elapsed:.1f} s over {clients} clients; "
        f"{streamed} streamed and stay counted, {refunded} failed before a token and were "
        f"given back; reservations left {counted} (over-counted {counted - streamed}); "
        f"slowest turn {max(o.seconds for o in outcomes):.2f} s; "
        f"{sum(o.timed_out and FAULTS[o.kind].code != UNAVAILABLE for o in outcomes)} "
        f"fast faults ran into the first-token timeout on this loaded machine"
    )
    assert counted == streamed


@pytest.mark.parametrize(
    ("vendor", "upstream_class"),
    [("anthropic", FaultyAnthropic), ("gemini", FaultyGemini)],
)
async def test_every_fault_has_its_code_on_the_other_vendors(
    tmp_path: Path, vendor: str, upstream_class: type[Upstream]
) -> None:
    """Anthropic and Gemini streams that stall, drop, garble or refuse end with the same
    codes as OpenAI's."""
    with upstream_class() as upstream:
        settings = fault_settings(
            tmp_path,
            **{f"{vendor}_api_key": "test-key", f"{vendor}_base_url": upstream.base_url},
        )
        with running_server(settings) as server:
            game = await first_game(server.url, server.token())
            async with ws_client(server.ws_url, server.token()) as client:
                await client.start(game, provider=vendor)
                # A first turn to warm up: the first request of a fresh process pays the
                # SDK's lazy imports, which can pass the 0.3 s first-token timeout on a
                # loaded machine (the default is 30 s) and are not what is tested here.
                await client.send({"type": "message", "text": f"Win? {marker('healthy')}"})
                await client.until("turn.completed", timeout=10)
                for kind in FAULTS:
                    started = time.monotonic()
                    await client.send({"type": "message", "text": f"Win? {marker(kind)}"})
                    frames = await client.until("turn.completed", timeout=10)
                    check(Outcome(kind, frames, time.monotonic() - started))
            assert await settle(lambda: _call(server, _running(server)), 0) == 0


# -- the server's own state, read on its loop -------------------------------------------


async def _running(server: RunningServer) -> int:
    return len(server.services.manager)


async def _connections(server: RunningServer) -> int:
    return len(server.services.connections)


async def _count_tasks() -> int:
    return len(asyncio.all_tasks())


async def _call(server: RunningServer, coro: Any) -> Any:
    return await asyncio.to_thread(server.call, coro)


async def _tasks(server: RunningServer) -> int:
    count: int = await _call(server, _count_tasks())
    return count
