"""Documents across instances (real Postgres and Redis): a document added, replaced or
deleted through one instance grounds, or stops grounding, answers on the other within a
second (the backplane's ``documents`` signal, not the 5 s language cache)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.pdfs import text_pdf
from tests.redis_cluster import RedisTarget
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

PAGES = [
    ["Setup", "Each player takes five cards and two gold coins."],
    ["Castles", "A castle scores nine points when its walls are closed."],
]
WITHIN = 1.0


@pytest.fixture
def pair(
    tmp_path: Path, postgres_url: str, shared_redis: RedisTarget
) -> Iterator[tuple[RunningServer, RunningServer]]:
    settings = make_settings(
        tmp_path, database_url=postgres_url, seed_demo=True, **shared_redis.settings()
    )
    with running_server(settings) as a, running_server(settings) as b:
        yield a, b


def staff(server: RunningServer) -> httpx.AsyncClient:
    token = server.token("root", "admin")
    return httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


async def ask(server: RunningServer, game_id: str, question: str) -> dict[str, Any]:
    async with asyncio.timeout(20), ws_client(server.ws_url, server.token("ann")) as ws:
        await ws.start(game_id)
        frames = await ws.ask(question)
    text = "".join(f["text"] for f in frames if f["type"] == "turn.delta")
    return {"text": text, **frames[-1]}


async def within(
    seconds: float, check: Callable[[], Awaitable[dict[str, Any]]], ok: Callable[[Any], bool]
) -> float:
    """How long until ``ok(await check())``; fails after ``seconds``."""
    started = time.monotonic()
    while True:
        result = await check()
        elapsed = time.monotonic() - started
        if ok(result):
            return elapsed
        assert elapsed < seconds, result
        await asyncio.sleep(0.05)


@pytest.mark.postgres
@pytest.mark.redis
async def test_add_replace_delete_are_seen_on_the_other_instance(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """B grounds on a PDF added through A, then on its replacement, then on nothing."""
    a, b = pair
    question = "How many points does a castle score?"
    async with staff(a) as http:
        game = (await http.post("/admin/games", json={"name": "Carcassonne"})).json()
        gid = game["id"]
        before = await ask(b, gid, question)  # B now remembers: no documents
        assert before["citations"] == []
        files = {"file": ("rules.pdf", text_pdf(PAGES), "application/pdf")}
        doc = (await http.post(f"/admin/games/{gid}/documents", files=files)).json()

        def page_two(c: dict[str, Any]) -> bool:
            return bool(c["citations"]) and c["citations"][0]["page"] == 2

        await within(WITHIN, lambda: ask(b, gid, question), page_two)

        new = [["Castles", "A castle now scores twelve points."]]
        files = {"file": ("rules.pdf", text_pdf(new), "application/pdf")}
        replaced = await http.put(f"/admin/games/{gid}/documents/{doc['id']}", files=files)
        assert replaced.status_code == 200, replaced.text
        await within(WITHIN, lambda: ask(b, gid, question), lambda c: "twelve" in c["text"])

        deleted = await http.delete(f"/admin/games/{gid}/documents/{doc['id']}")
        assert deleted.status_code == 204
        await within(WITHIN, lambda: ask(b, gid, question), lambda c: c["citations"] == [])
