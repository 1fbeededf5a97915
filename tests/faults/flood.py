"""A hostile client in its own process: ``python -m tests.faults.flood URL TOKEN SECONDS N``.

Opens N WebSocket connections with one token and, on each, sends frames as fast as the
socket takes them (pings, junk text, 32 KB frames); when the server closes one (1008
for abuse), it connects again at once. Prints a JSON summary on exit. It runs in a
process of its own so that its CPU does not slow the measuring client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

PAYLOADS = [
    json.dumps({"type": "ping", "id": 1}),
    "not json at all",
    json.dumps({"type": "message", "text": "flood " * 500}),
    "x" * 32_000,
]


async def one(url: str, token: str, until: float, counts: dict[str, int]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < until:
        counts["connects"] += 1
        try:
            async with connect(
                url, additional_headers=headers, open_timeout=5, close_timeout=1, compression=None
            ) as ws:
                i = 0
                while time.monotonic() < until:
                    await ws.send(PAYLOADS[i % len(PAYLOADS)])
                    counts["frames"] += 1
                    i += 1
                    if i % 16 == 0:
                        # drain what the server said so its outbox never blocks on us
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.001):
                                while True:
                                    await ws.recv()
        except (ConnectionClosed, InvalidStatus, OSError, TimeoutError):
            counts["closed"] += 1


async def main(url: str, token: str, seconds: float, connections: int) -> None:
    counts = {"connects": 0, "frames": 0, "closed": 0}
    until = time.monotonic() + seconds
    await asyncio.gather(*(one(url, token, until, counts) for _ in range(connections)))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    url, token, seconds, connections = sys.argv[1:5]
    asyncio.run(main(url, token, float(seconds), int(connections)))
