"""CPU per streamed event of each HTTP transport the providers could read through.

    .venv/bin/python bench/transports.py [--streams 50] [--rounds 3] [--runs 3]

Reading the upstream's event stream is the largest single cost of a token. This
isolates it: the bench's loopback upstream (``upstream.py``, on core 1) streams
``--streams`` answers of 200 events at 50 events/s at once, ``--rounds`` times, to
one client process (on core 0) that reads the raw bytes and counts the events, and
nothing else. Each transport runs in a fresh process, ``--runs`` times, taking turns;
the table gives the median CPU (user + system) per event of the client process:

- ``httpx``: ``httpx.AsyncClient.stream`` + ``aiter_raw`` (the bench's floor relay
  reads this way, with ``aiter_lines``);
- ``aiohttp``: ``aiohttp.ClientSession.post`` + ``content.iter_any()``, no httpx2 layer;
- ``sdk-httpx2``: ``AsyncOpenAI.post(..., stream=True)`` with the SDK's default
  transport (httpx2 on httpcore2 and AnyIO);
- ``sdk-aiohttp``: the same call with ``http_client=openai.DefaultAioHttpClient()``,
  the SDK's aiohttp transport, which the product uses;
- ``product-openai``: the product's own reading, ``OpenAIProvider.stream`` inside
  ``with_timeouts`` as a turn consumes it (that transport, the event-stream reader,
  the JSON of each event and the text mending), counting text deltas.

``--kinds`` picks some of them (``--kinds product-openai`` to compare two versions of
the product's reading: run it in each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import Procs, can_pin, free_port, wait_healthy  # noqa: E402

KINDS = ("httpx", "aiohttp", "sdk-httpx2", "sdk-aiohttp", "product-openai")
TOKENS, GAP_MS = 200, 20


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _client(kind: str, base_url: str, streams: int, rounds: int) -> dict[str, Any]:
    """Runs in the measured process: read ``streams`` answers at once, ``rounds`` times."""
    import httpx
    import httpx2
    import openai

    def body(tokens: int, gap_ms: int) -> dict[str, Any]:
        tag = f"[bench tokens={tokens} gap_ms={gap_ms} first_ms=0]"
        return {
            "model": "bench",
            "stream": True,
            "messages": [{"role": "user", "content": tag}],
            "stream_options": {"include_usage": True},
        }

    if kind == "httpx":
        limits = httpx.Limits(max_connections=10_000, max_keepalive_connections=10_000)
        plain = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), limits=limits)

        async def read(tokens: int, gap_ms: int) -> int:
            url = f"{base_url}/chat/completions"
            async with plain.stream("POST", url, json=body(tokens, gap_ms)) as response:
                return sum([chunk.count(b"\n\n") async for chunk in response.aiter_raw()])

        close = plain.aclose
    elif kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(sock_connect=5.0, sock_read=60.0),
            connector=aiohttp.TCPConnector(limit=10_000),
        )

        async def read(tokens: int, gap_ms: int) -> int:
            url = f"{base_url}/chat/completions"
            async with session.post(url, json=body(tokens, gap_ms)) as response:
                return sum([chunk.count(b"\n\n") async for chunk in response.content.iter_any()])

        close = session.close
    elif kind == "product-openai":
        from chat_server.providers.base import ChatMessage, ProviderRequest, TextDelta
        from chat_server.providers.openai import OpenAIProvider
        from chat_server.providers.timing import with_timeouts

        provider = OpenAIProvider(api_key="bench", model="bench", base_url=base_url)

        async def read(tokens: int, gap_ms: int) -> int:
            tag = f"[bench tokens={tokens} gap_ms={gap_ms} first_ms=0]"
            request = ProviderRequest(
                model="bench",
                system="",
                messages=[ChatMessage("user", tag)],
                passages=[],
                language="en",
                game_name="bench",
            )
            events = with_timeouts(provider.stream(request), first_token=30, idle=30)
            return sum([1 async for e in events if isinstance(e, TextDelta)])

        close = provider.aclose
    else:
        extra: dict[str, Any] = {}
        if kind == "sdk-aiohttp":
            extra["http_client"] = openai.DefaultAioHttpClient()
        sdk = openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0, **extra)

        async def read(tokens: int, gap_ms: int) -> int:
            response = await sdk.post(
                "/chat/completions",
                body=body(tokens, gap_ms),
                options={"security": {"bearer_auth": True}},
                cast_to=httpx2.Response,
                stream=True,
            )
            try:
                return sum([chunk.count(b"\n\n") async for chunk in response.aiter_raw()])
            finally:
                await response.aclose()

        close = sdk.close

    async with asyncio.timeout(60 + rounds * TOKENS * GAP_MS / 1000 * 3):
        await asyncio.gather(*(read(20, 2) for _ in range(streams)))  # warm-up: pool, imports
        start = _cpu()
        events = 0
        for _ in range(rounds):
            reads = [read(TOKENS, int(GAP_MS)) for _ in range(streams)]
            events += sum(await asyncio.gather(*reads))
        used = _cpu() - start
        await close()
    return {"kind": kind, "events": events, "us_per_event": used / max(1, events) * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma list of kinds")
    parser.add_argument("--client", nargs=2, metavar=("KIND", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:  # the measured process
        import uvloop

        kind, url = args.client
        result = uvloop.run(_client(kind, url, args.streams, args.rounds))
        print("RESULT " + json.dumps(result))
        return 0

    import tempfile

    procs = Procs(Path(tempfile.mkdtemp(prefix="chat-bench-transports-")), pin=can_pin())
    try:
        port = free_port()
        upstream = procs.start(
            "upstream", [sys.executable, str(HERE / "upstream.py"), "--port", str(port)], core=1
        )
        wait_healthy(f"http://127.0.0.1:{port}/healthz", upstream, timeout=30)
        url = f"http://127.0.0.1:{port}/v1"
        kinds = [k for k in args.kinds.split(",") if k in KINDS]
        figures: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.runs):
            for kind in kinds:
                cmd = [sys.executable, __file__, "--client", kind, url]
                cmd += ["--streams", str(args.streams), "--rounds", str(args.rounds)]
                budget = 120 + args.rounds * TOKENS * GAP_MS / 1000 * 3
                out = procs.run(f"client-{kind}", cmd, core=0, timeout=budget)
                line = next(x for x in out.splitlines() if x.startswith("RESULT "))
                figures[kind].append(json.loads(line[7:])["us_per_event"])
    except (RuntimeError, OSError, subprocess.TimeoutExpired, StopIteration) as exc:
        print(f"the bench failed: {exc!r}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    floor = statistics.median(figures.get("httpx") or figures[kinds[0]])
    print(f"\n{args.streams} streams x {TOKENS} events at {1000 / GAP_MS:.0f}/s, runs {args.runs}")
    print(f"| transport | CPU per event, us (median) | runs | / {kinds[0]} |")
    print("| --- | --- | --- | --- |")
    for kind in kinds:
        value = statistics.median(figures[kind])
        runs = ", ".join(f"{v:.1f}" for v in figures[kind])
        print(f"| {kind} | {value:.1f} | {runs} | {value / floor:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
