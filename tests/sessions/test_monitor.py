"""The orphan sweep on a live instance: its own placeholders that no turn runs or still
stores get a final status; a turn that runs longer than the orphan age is left alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from chat_server.storage.chat import begin_turn
from chat_server.storage.ids import new_id
from tests.server import make_settings, running_server
from tests.wsclient import ws_client


async def test_own_orphans_are_closed_and_running_turns_are_not(tmp_path: Path) -> None:
    """A `streaming` placeholder of this instance with no turn behind it (its question
    was written as its asker left) is `error` within the orphan age; a turn that
    streams for longer than that age still ends `complete`."""
    settings = make_settings(
        tmp_path, registry_ttl=0.5, orphan_sweep_interval=0.3, local_token_delay=0.05
    )
    with running_server(settings) as srv:
        token = srv.token("olga")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=headers) as http:
            games = await http.get("/games", params={"search": "catan"})
        catan = games.json()["games"][0]["id"]
        async with ws_client(srv.ws_url, token) as left, ws_client(srv.ws_url, token) as asker:
            orphan_session = (await left.start(catan))["session"]["id"]
            srv.call(
                begin_turn(
                    srv.services.db,
                    session_id=orphan_session,
                    turn_id=new_id(),
                    text="asked as the connection dropped",
                    instance_id=srv.services.chat.instance_id,
                )
            )
            long_session = (await asker.start(catan))["session"]["id"]
            started = time.monotonic()
            await asker.send({"type": "message", "text": "What happens when a seven is rolled?"})
            frames = await asker.until("turn.completed", timeout=30)
        assert time.monotonic() - started > 5.5 + 0.3  # it outlived the orphan age (and a sweep)
        assert frames[-1]["finish_reason"] == "stop"
        async with httpx.AsyncClient(base_url=srv.url, headers=headers) as http:
            for _ in range(50):
                orphan = (await http.get(f"/me/sessions/{orphan_session}")).json()["messages"]
                if orphan[-1]["status"] != "streaming":
                    break
                await asyncio.sleep(0.2)
            answered = (await http.get(f"/me/sessions/{long_session}")).json()["messages"]
    assert [m["status"] for m in orphan] == ["complete", "error"]
    assert [m["status"] for m in answered] == ["complete", "complete"]
