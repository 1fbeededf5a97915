"""/metrics moves as turns run (Prometheus text format, scraped before and after)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client


async def scrape(server: RunningServer) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_a_turn_and_a_cancelled_turn_move_the_metrics(tmp_path: Path) -> None:
    """A completed turn counts as stop with its latency and tokens; a cancelled one as
    cancelled; no user or session id appears in any label."""
    with running_server(make_settings(tmp_path, local_token_delay=0.02)) as server:
        token = server.token("alice")
        async with httpx.AsyncClient(timeout=5) as http:
            games = await http.get(
                f"{server.url}/games", headers={"Authorization": f"Bearer {token}"}
            )
        game = games.json()["games"][0]["id"]
        before = await scrape(server)
        async with ws_client(server.ws_url, token) as client:
            await client.start(game)
            during = await scrape(server)
            assert delta(during, before, "chat_connections_open") == 1
            await client.ask("How do I win?")
            await client.send({"type": "message", "text": "Explain the robber in detail"})
            await client.expect("turn.started")
            await client.expect("turn.delta")
            await client.send({"type": "cancel"})
            frames = await client.until("turn.completed")
            assert frames[-1]["finish_reason"] == "cancelled"
        after = await scrape(server)
    stop = 'chat_turns_total{finish_reason="stop",provider="local"}'
    cancelled = 'chat_turns_total{finish_reason="cancelled",provider="local"}'
    assert delta(after, before, stop) == 1
    assert delta(after, before, cancelled) == 1
    assert delta(after, before, 'chat_cancels_total{cause="client"}') == 1
    assert delta(after, before, 'chat_first_token_seconds_count{provider="local"}') == 2
    assert delta(after, before, 'chat_tokens_total{direction="output",provider="local"}') > 0
    assert "chat_tokens_after_cancel_total" in after
    assert all("alice" not in key and game not in key for key in after)
