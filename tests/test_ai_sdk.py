"""The Vercel AI SDK's own transports (the real ``ai`` package, in Node) against a real
server: ``/ws/ai-sdk`` (WebSocketChatTransport) and ``/ai-sdk/chat`` (DefaultChatTransport).

Each Node run prints what the client saw: every chunk (each checked against the
package's ``uiMessageChunkSchema``, unknown keys refused), the message text and sources
as ``readUIMessageStream`` builds them (what ``useChat`` shows), or the error it threw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chat_server.storage.flags import upsert_flag
from tests.node import run_node
from tests.server import RunningServer, make_settings, running_server
from tests.test_cluster import eventually
from tests.upstreams import OpenAIUpstream, Script
from tests.wsclient import ws_client

TOKENS = ["The ", "robber ", "moves ", "on ", "a ", "seven", "."]
TRANSPORTS = ["ws", "http"]


@pytest.fixture
def upstream() -> Iterator[OpenAIUpstream]:
    with OpenAIUpstream(Script(tokens=TOKENS, token_delay=0.01)) as up:
        yield up


def settings(tmp_path: Path, upstream: OpenAIUpstream, **extra: Any) -> Any:
    return make_settings(
        tmp_path,
        openai_api_key="sk",
        openai_base_url=upstream.base_url,
        ws_resume_grace=10.0,
        **extra,
    )


def send_frame(request_id: str, chat_id: str, game_id: str, text: str = "Go") -> dict[str, Any]:
    """A /ws/ai-sdk ``send`` of one user message to the chat ``chat_id`` (new: on
    ``game_id``), signed in by the socket's handshake."""
    return {
        "type": "send",
        "requestId": request_id,
        "id": chat_id,
        "trigger": "submit-message",
        "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": text}]}],
        "headers": {},
        "body": {"game_id": game_id},
    }


@pytest.fixture
def server(tmp_path: Path, upstream: OpenAIUpstream) -> Iterator[RunningServer]:
    with running_server(settings(tmp_path, upstream)) as srv:
        yield srv


async def game(server: RunningServer, name: str = "catan") -> str:
    headers = {"Authorization": f"Bearer {server.token('root', 'admin')}"}
    async with httpx.AsyncClient(timeout=5) as http:
        found = await http.get(f"{server.url}/games", params={"search": name}, headers=headers)
    return str(found.json()["games"][0]["id"])


async def client(server: RunningServer, transport: str, **spec: Any) -> dict[str, Any]:
    spec = {"transport": transport, "action": "send", "base": server.url, **spec}
    spec.setdefault("token", server.token())
    result: dict[str, Any] = await run_node("client.mjs", json.dumps(spec))
    assert result["invalid"] == [], result["invalid"]
    return result


def kinds(result: dict[str, Any]) -> list[str]:
    return [c["type"] for c in result["chunks"]]


async def stored(server: RunningServer, chat_id: str, user: str = "user-1") -> list[Any]:
    headers = {"Authorization": f"Bearer {server.token(user)}"}
    async with httpx.AsyncClient(timeout=5) as http:
        got = await http.get(f"{server.url}/me/sessions/{chat_id}", headers=headers)
    got.raise_for_status()
    return list(got.json()["messages"])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_answer_streams_with_the_upstreams_text_and_sources(
    server: RunningServer, upstream: OpenAIUpstream, transport: str
) -> None:
    """A question over the SDK's transport streams the upstream's text, its citations as
    sources and a finish, and the chat is a stored session under the client's id."""
    chat_id = f"chat-{transport}-1"
    result = await client(
        server, transport, chatId=chat_id, gameId=await game(server), text="Seven?"
    )
    assert result["outcome"] == "stream", result
    assert result["text"] == "".join(TOKENS)
    order = kinds(result)
    assert order[:2] == ["start", "text-start"]
    assert order[-3:] == ["source-document", "data-quota", "finish"] or order[-2:] == [
        "data-quota",
        "finish",
    ]
    assert result["chunks"][-1]["finishReason"] == "stop"
    assert result["sources"], "the answer names the rulebook passages it rests on"
    messages = await stored(server, chat_id)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == "".join(TOKENS)
    assert result["chunks"][0]["messageId"] == messages[1]["id"]
    asked = upstream.requests[-1].body["messages"][-1]["content"]
    assert "Seven?" in json.dumps(asked)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_refusals_name_the_contract_code(
    tmp_path: Path, upstream: OpenAIUpstream, transport: str
) -> None:
    """Another user's chat is not_found; a new chat without a game is invalid."""
    with running_server(settings(tmp_path, upstream)) as server:
        catan = await game(server)
        first = await client(server, transport, chatId="mine", gameId=catan, text="Hi")
        assert first["outcome"] == "stream"
        theirs = await client(
            server, transport, chatId="mine", text="Hi", token=server.token("user-2")
        )
        assert theirs["outcome"] == "failed"
        if transport == "ws":
            assert theirs["error"].startswith("not_found: ")
        else:
            assert theirs["status"] == 404
            assert json.loads(theirs["responseBody"])["error_code"] == "SESSION_NOT_FOUND"


async def test_resume_without_a_running_turn_is_no_active_or_204(server: RunningServer) -> None:
    """Resuming a chat with no running turn: no-active over WebSocket, 204 over HTTP."""
    for transport in TRANSPORTS:
        result = await client(server, transport, action="resume", chatId="nothing-runs")
        assert result["outcome"] == "no-active", result


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_abort_reaches_the_upstream(
    server: RunningServer, upstream: OpenAIUpstream, transport: str
) -> None:
    """Aborting in the client cancels the turn: the upstream request is closed and the
    answer is stored as cancelled."""
    upstream.script = Script(tokens=[f"t{i} " for i in range(2000)], token_delay=0.01)
    chat_id = f"abort-{transport}"
    result = await client(
        server, transport, chatId=chat_id, gameId=await game(server), text="Go", abortAfterDeltas=3
    )
    if transport == "http":
        # DefaultChatTransport's abort only drops the request; stop is DELETE .../stream.
        headers = {"Authorization": f"Bearer {server.token()}"}
        async with httpx.AsyncClient(timeout=5) as http:
            stop = await http.delete(f"{server.url}/ai-sdk/chat/{chat_id}/stream", headers=headers)
        assert stop.status_code == 204
    assert "text-delta" in kinds(result)
    assert await asyncio.to_thread(upstream.disconnected.wait, 5)
    for _ in range(50):
        messages = await stored(server, chat_id)
        if messages[-1]["status"] != "streaming":
            break
        await asyncio.sleep(0.1)
    assert messages[-1]["status"] == "cancelled"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_dropped_client_resumes_the_answer_from_its_beginning(
    server: RunningServer, upstream: OpenAIUpstream, transport: str
) -> None:
    """A client that drops mid-answer leaves the turn running; resuming replays the
    answer from start and text-start, then live, to the whole upstream text."""
    tokens = [f"w{i} " for i in range(150)]
    upstream.script = Script(tokens=tokens, token_delay=0.01)
    chat_id = f"drop-{transport}"
    first = await client(
        server, transport, chatId=chat_id, gameId=await game(server), text="Go", dropAfterDeltas=2
    )
    assert kinds(first)[-1] == "text-delta"
    resumed = await client(server, transport, action="resume", chatId=chat_id)
    assert resumed["outcome"] == "stream", resumed
    assert kinds(resumed)[:2] == ["start", "text-start"]
    assert resumed["text"] == "".join(tokens)
    assert resumed["chunks"][-1] == {"type": "finish", "finishReason": "stop"}
    assert not upstream.disconnected.is_set() or upstream.requests


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_flag_then_the_quota_refuse_before_the_turn(
    server: RunningServer, upstream: OpenAIUpstream, transport: str
) -> None:
    """The chat flag off is feature_disabled (HTTP 403); a used-up quota is quota_exceeded
    (HTTP 429); nothing reaches the upstream."""
    catan = await game(server)

    async def set_flag(enabled: bool, limit: int | None) -> None:
        await upsert_flag(
            server.services.db,
            feature_key="chat",
            scope_type="game",
            scope_id=catan,
            role=None,
            environment="dev",
            enabled=enabled,
            metadata={} if limit is None else {"daily_limit": limit},
        )
        await server.services.flags.changed()

    server.call(set_flag(False, None))
    chat_id = f"flags-{transport}"
    off = await client(server, transport, chatId=chat_id, gameId=catan, text="Hi")
    server.call(set_flag(True, 1))
    ok = await client(server, transport, chatId=chat_id, gameId=catan, text="Hi")
    over = await client(server, transport, chatId=chat_id, gameId=catan, text="Hi again")
    assert ok["outcome"] == "stream"
    quota = next(c for c in ok["chunks"] if c["type"] == "data-quota")["data"]
    assert (quota["daily_limit"], quota["used"], quota["remaining"]) == (1, 1, 0)
    assert len(upstream.requests) == 1
    for result, code, status in ((off, "feature_disabled", 403), (over, "quota_exceeded", 429)):
        assert result["outcome"] == "failed"
        if transport == "ws":
            assert result["error"].startswith(f"{code}: "), result
        else:
            assert result["status"] == status
            assert json.loads(result["responseBody"])["error_code"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_regenerate_asks_the_last_stored_question_again(
    server: RunningServer, upstream: OpenAIUpstream, transport: str
) -> None:
    """regenerate-message asks the chat's last stored question as a new turn."""
    chat_id = f"regen-{transport}"
    await client(server, transport, chatId=chat_id, gameId=await game(server), text="Robber?")
    again = await client(server, transport, chatId=chat_id, trigger="regenerate-message")
    assert again["outcome"] == "stream" and again["text"] == "".join(TOKENS)
    questions = [m["content"] for m in await stored(server, chat_id) if m["role"] == "user"]
    assert questions == ["Robber?", "Robber?"]


async def test_a_chat_started_in_one_dialect_continues_in_the_other(
    server: RunningServer,
) -> None:
    """The chat id is the session id: a chat begun over WebSocket goes on over HTTP and
    over /ws/chat's session.resume, with one history."""
    chat_id = "both-ways"
    await client(server, "ws", chatId=chat_id, gameId=await game(server), text="One")
    await client(server, "http", chatId=chat_id, text="Two")
    async with ws_client(server.ws_url, server.token()) as ws:
        await ws.send({"type": "session.resume", "session_id": chat_id})
        history = (await ws.expect("session.ready"))["history"]
    assert [m["content"] for m in history if m["role"] == "user"] == ["One", "Two"]


async def test_tokens_come_from_headers_never_from_the_url(server: RunningServer) -> None:
    """The handshake's Authorization header signs a socket in; a token in the URL is
    refused (4401); a frame with another user's token is forbidden (4403)."""
    base = server.url.replace("http", "ws") + "/ws/ai-sdk"
    async with ws_client(f"{base}?token={server.token()}", ready=False) as ws:
        assert await ws.closed() == 4401
    send = {
        "type": "send",
        "requestId": "r1",
        "id": "hdr-chat",
        "trigger": "submit-message",
        "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}],
        "headers": {},
        "body": {"game_id": await game(server)},
    }
    async with ws_client(base, server.token(), ready=False) as ws:
        await ws.send(send)
        frames = [await ws.recv()]
        while frames[-1]["type"] not in ("end", "error"):
            frames.append(await ws.recv())
        assert frames[0] == {"type": "start", "requestId": "r1"}
        assert [f["sequence"] for f in frames if f["type"] == "chunk"] == list(
            range(len(frames) - 2)
        )
        other = {
            **send,
            "requestId": "r2",
            "headers": {"Authorization": f"Bearer {server.token('user-2')}"},
        }
        await ws.send(other)
        refused = await ws.recv()
        assert refused["requestId"] == "r2" and refused["errorText"].startswith("forbidden: ")
        assert await ws.closed() == 4403
    async with ws_client(base, ready=False) as ws:
        await ws.send({**send, "requestId": "r3"})
        refused = await ws.recv()
        assert refused["errorText"].startswith("unauthorized: ")


@pytest.fixture
def pair(
    tmp_path: Path, postgres_url: str, redis_url: str, upstream: OpenAIUpstream
) -> Iterator[tuple[RunningServer, RunningServer]]:
    config = settings(
        tmp_path, upstream, database_url=postgres_url, redis_url=redis_url, seed_demo=True
    )
    with running_server(config) as a, running_server(config) as b:
        yield a, b


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_dropped_client_resumes_on_another_instance(
    pair: tuple[RunningServer, RunningServer], upstream: OpenAIUpstream, transport: str
) -> None:
    """Two instances on one Postgres and Redis: a client that drops on A resumes on B and
    gets the whole answer from its beginning; an abort on B stops the turn on A."""
    a, b = pair
    tokens = [f"w{i} " for i in range(150)]
    upstream.script = Script(tokens=tokens, token_delay=0.01)
    chat_id = f"cross-{transport}"
    first = await client(
        a, transport, chatId=chat_id, gameId=await game(a), text="Go", dropAfterDeltas=2
    )
    assert kinds(first)[-1] == "text-delta"
    resumed = await client(b, transport, action="resume", chatId=chat_id)
    assert resumed["outcome"] == "stream", resumed
    assert kinds(resumed)[:2] == ["start", "text-start"]
    assert resumed["text"] == "".join(tokens)
    assert (await stored(b, chat_id))[-1]["content"] == "".join(tokens)
    upstream.disconnected.clear()
    upstream.script = Script(tokens=[f"t{i} " for i in range(3000)], token_delay=0.01)
    await client(a, transport, chatId=chat_id, text="Again", dropAfterDeltas=2)
    if transport == "ws":
        await client(b, transport, action="resume", chatId=chat_id, abortAfterDeltas=3)
    else:
        headers = {"Authorization": f"Bearer {b.token()}"}
        async with httpx.AsyncClient(timeout=5) as http:
            stop = await http.delete(f"{b.url}/ai-sdk/chat/{chat_id}/stream", headers=headers)
        assert stop.status_code == 204
    assert await asyncio.to_thread(upstream.disconnected.wait, 5)


async def test_http_streams_count_against_the_users_connections(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """WS_MAX_CONNECTIONS_PER_USER=2: two answers streaming over /ai-sdk/chat, a third
    POST is 429 rate_limited (no turn); once they end, the next one streams."""
    upstream.script = Script(tokens=[f"s{i} " for i in range(40)], token_delay=0.03)
    with running_server(settings(tmp_path, upstream, ws_max_connections_per_user=2)) as server:
        game_id = await game(server)
        headers = {"Authorization": f"Bearer {server.token('pat')}"}

        def body(chat_id: str) -> dict[str, Any]:
            return {
                "id": chat_id,
                "trigger": "submit-message",
                "messages": [
                    {"id": "u", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}
                ],
                "game_id": game_id,
            }

        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=20) as http:
            async with (
                http.stream("POST", "/ai-sdk/chat", json=body("one")) as one,
                http.stream("POST", "/ai-sdk/chat", json=body("two")) as two,
            ):
                assert (one.status_code, two.status_code) == (200, 200)
                third = await http.post("/ai-sdk/chat", json=body("three"))
                assert third.status_code == 429
                assert third.json()["error_code"] == "RATE_LIMITED"
                for response in (one, two):
                    assert [line async for line in response.aiter_lines()][-2] == "data: [DONE]"
            await asyncio.sleep(0.3)  # the slots are given back as the responses end
            again = await http.post("/ai-sdk/chat", json=body("three"))
            assert again.status_code == 200 and again.text.rstrip().endswith("data: [DONE]")
    assert len(upstream.requests) == 3


async def test_http_requests_count_against_the_users_rate(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """WS_FRAME_BURST=2 at 0.5/s: two POSTs in a row are answered (here: not_found, a
    hidden game), the third is 429 rate_limited before anything else; another user is
    not slowed."""
    extra = {"ws_frame_burst": 2, "ws_max_frames_per_second": 0.5}
    with running_server(settings(tmp_path, upstream, **extra)) as server:
        staff = {"Authorization": f"Bearer {server.token('ops', 'developer')}"}
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            hidden = (
                await http.post(
                    "/admin/games", json={"name": "Later", "status": "hidden"}, headers=staff
                )
            ).json()["id"]
            body = {
                "id": "rated",
                "trigger": "submit-message",
                "messages": [
                    {"id": "u", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}
                ],
                "game_id": hidden,
            }
            mine = {"Authorization": f"Bearer {server.token('quick')}"}
            codes = [
                (await http.post("/ai-sdk/chat", json=body, headers=mine)).status_code
                for _ in range(3)
            ]
            other = {"Authorization": f"Bearer {server.token('calm')}"}
            theirs = await http.post("/ai-sdk/chat", json=body, headers=other)
    assert codes == [404, 404, 429]
    assert theirs.status_code == 404


async def test_the_sse_stream_has_the_sdk_headers_heartbeats_and_done(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """POST /ai-sdk/chat answers the UI message stream headers, comment lines while the
    provider is silent, one data line per chunk and data: [DONE] at the end."""
    upstream.script = Script(tokens=TOKENS, first_token_delay=1.0)
    with running_server(settings(tmp_path, upstream, sse_heartbeat=0.2)) as server:
        body = {
            "id": "sse-chat",
            "trigger": "submit-message",
            "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "Hi"}]}],
            "game_id": await game(server),
        }
        headers = {"Authorization": f"Bearer {server.token()}"}
        async with (
            httpx.AsyncClient(timeout=10) as http,
            http.stream("POST", f"{server.url}/ai-sdk/chat", json=body, headers=headers) as got,
        ):
            lines = [line async for line in got.aiter_lines() if line]
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("text/event-stream")
    assert got.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert got.headers["cache-control"] == "no-cache"
    assert got.headers["x-accel-buffering"] == "no"
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert any(line.startswith(":") for line in lines[first_data + 2 :]), lines[:8]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1] if line.startswith("data: ")]
    assert [c["type"] for c in chunks][:2] == ["start", "text-start"]
    assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == "".join(TOKENS)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_device_on_ws_chat_sees_the_turn_asked_over_the_sdk(
    server: RunningServer, transport: str
) -> None:
    """The AI SDK dialects are followers of the same sessions: a /ws/chat connection
    attached to the chat receives the turn asked through the SDK's transport, live."""
    chat_id = f"fanout-{transport}"
    catan = await game(server)
    await client(server, transport, chatId=chat_id, gameId=catan, text="First")
    async with ws_client(server.ws_url, server.token()) as ws:
        await ws.send({"type": "session.resume", "session_id": chat_id})
        await ws.expect("session.ready")
        asked = asyncio.create_task(client(server, transport, chatId=chat_id, text="Second"))
        frames = await ws.until("turn.completed")
        result = await asked
    deltas = [f for f in frames if f["type"] == "turn.delta"]
    assert "".join(d["text"] for d in deltas) == result["text"] == "".join(TOKENS)
    assert frames[-1]["message_id"] == result["chunks"][0]["messageId"]


async def test_an_admin_kill_ends_the_turn_and_closes_the_socket(
    server: RunningServer, upstream: OpenAIUpstream
) -> None:
    """DELETE /admin/sessions/{chat} cancels the chat's turn at once and closes the
    /ws/ai-sdk socket that follows it with 4000, as on /ws/chat."""
    upstream.script = Script(tokens=[f"t{i} " for i in range(2000)], token_delay=0.01)
    send = {
        "type": "send",
        "requestId": "r1",
        "id": "killed-chat",
        "trigger": "submit-message",
        "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "Go"}]}],
        "headers": {"authorization": f"Bearer {server.token()}"},
        "body": {"game_id": await game(server)},
    }
    base = server.url.replace("http", "ws") + "/ws/ai-sdk"
    async with ws_client(base, ready=False) as ws:
        await ws.send(send)
        while (await ws.recv()).get("chunk", {}).get("type") != "text-delta":
            pass
        headers = {"Authorization": f"Bearer {server.token('root', 'admin')}"}
        async with httpx.AsyncClient(timeout=5) as http:
            killed = await http.delete(f"{server.url}/admin/sessions/killed-chat", headers=headers)
        assert killed.status_code == 204
        assert await ws.closed() == 4000
    assert await asyncio.to_thread(upstream.disconnected.wait, 5)


async def test_token_expiry_waits_for_the_streaming_answer(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """A socket's token runs out while an answer streams: the answer ends (finish, end),
    then token_expired and close 4401."""
    upstream.script = Script(tokens=[f"w{i} " for i in range(250)], token_delay=0.01)
    with running_server(settings(tmp_path, upstream, jwt_leeway=0.0)) as server:
        # ``exp`` is whole seconds: a ttl of 2 lives 1 to 2 s, always past the turn's
        # start and before the answer's end (250 tokens, 10 ms apart).
        token = server.token(ttl=2)
        send = {
            "type": "send",
            "requestId": "r1",
            "id": "expiring",
            "trigger": "submit-message",
            "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "Go"}]}],
            "headers": {},
            "body": {"game_id": await game(server)},
        }
        base = server.url.replace("http", "ws") + "/ws/ai-sdk"
        async with ws_client(base, token, ready=False) as ws:
            await ws.send(send)
            frames = [await ws.recv()]
            while frames[-1]["type"] != "end":
                frames.append(await ws.recv(timeout=10))
            chunks = [f["chunk"] for f in frames if f["type"] == "chunk"]
            assert chunks[-1] == {"type": "finish", "finishReason": "stop"}
            expired = await ws.recv(timeout=5)
            assert expired["type"] == "error" and expired["errorText"].startswith("token_expired")
            assert await ws.closed() == 4401


async def test_an_expired_token_opens_no_new_chat(tmp_path: Path, upstream: OpenAIUpstream) -> None:
    """Past the token's expiry, while an answer still streams, a send on a new chat is
    token_expired (no turn starts); the socket closes once the answer has ended."""
    upstream.script = Script(tokens=[f"w{i} " for i in range(300)], token_delay=0.01)
    with running_server(settings(tmp_path, upstream, jwt_leeway=0.0)) as server:
        token = server.token(ttl=2)
        game_id = await game(server)
        base = server.url.replace("http", "ws") + "/ws/ai-sdk"
        async with ws_client(base, token, ready=False) as ws:
            await ws.send(send_frame("r1", "first", game_id))
            await ws.recv()
            await asyncio.sleep(2.2)  # expired now; the first answer still streams
            await ws.send(send_frame("r2", "second", game_id))
            frames = [await ws.recv()]
            while not (frames[-1].get("requestId") == "r2" and frames[-1]["type"] == "error"):
                frames.append(await ws.recv(timeout=10))
            assert frames[-1]["errorText"].startswith("token_expired")
            assert not [f for f in frames if f.get("requestId") == "r2" and f["type"] == "chunk"]
    assert len(upstream.requests) == 1  # the refused chat asked no provider


async def test_one_socket_answers_at_most_max_requests_at_once(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """A socket sending to ever new chats while every answer still streams: the first
    MAX_REQUESTS are answered, the next is rate_limited (no turn, no upstream request)."""
    from chat_server.transports.ai_sdk_ws import MAX_REQUESTS

    upstream.script = Script(tokens=[f"w{i} " for i in range(400)], token_delay=0.05)
    with running_server(settings(tmp_path, upstream, ws_frame_burst=100)) as server:
        game_id = await game(server)
        base = server.url.replace("http", "ws") + "/ws/ai-sdk"
        async with ws_client(base, server.token("many"), ready=False) as ws:
            for n in range(MAX_REQUESTS + 1):
                await ws.send(send_frame(f"r{n}", f"chat-{n}", game_id))
            last = f"r{MAX_REQUESTS}"
            refused = await ws.recv(timeout=10)
            while refused.get("requestId") != last:
                refused = await ws.recv(timeout=10)
            assert refused["type"] == "error"
            assert refused["errorText"].startswith("rate_limited")
            for _ in range(150):  # the answered ones reach the upstream
                if len(upstream.requests) >= MAX_REQUESTS:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
    assert len(upstream.requests) == MAX_REQUESTS


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_provider_failure_mid_answer_is_an_error_chunk_then_finish(
    server: RunningServer, upstream: OpenAIUpstream, transport: str
) -> None:
    """The upstream drops mid-stream: the client gets the text so far, an error chunk
    naming provider_unavailable, then finish with error; the partial answer is stored."""
    upstream.script = Script(tokens=TOKENS, token_delay=0.01, drop_after=3)
    chat_id = f"dropped-upstream-{transport}"
    result = await client(server, transport, chatId=chat_id, gameId=await game(server), text="?")
    order = kinds(result)
    assert order[:2] == ["start", "text-start"]
    error = next(c for c in result["chunks"] if c["type"] == "error")
    assert error["errorText"].startswith("provider_unavailable: ")
    assert order.index("error") < order.index("text-end")
    assert result["chunks"][-1] == {"type": "finish", "finishReason": "error"}
    assert result["text"] == "".join(TOKENS[:3])
    messages = await stored(server, chat_id)
    assert (messages[-1]["status"], messages[-1]["content"]) == ("error", "".join(TOKENS[:3]))


async def test_malformed_frames_are_refused_and_the_socket_lives(server: RunningServer) -> None:
    """Malformed frames each get an invalid_frame error (naming no running request); the
    socket then serves a valid request."""
    base = server.url.replace("http", "ws") + "/ws/ai-sdk"
    bad: list[str | bytes] = [
        "not json",
        "[]",
        '{"type": "hello", "requestId": "x"}',
        '{"type": "send", "requestId": "x"}',
        '{"type": "send", "requestId": "x", "id": "a/b", "trigger": "submit-message",'
        ' "messages": [], "headers": {}, "body": {}}',
        b"\x00\x01",
    ]
    async with ws_client(base, server.token(), ready=False) as ws:
        for frame in bad:
            await ws.ws.send(frame)
            refused = await ws.recv()
            assert refused["type"] == "error", frame
            assert refused["errorText"].startswith("invalid_frame: "), refused
        await ws.send(
            {"type": "resume", "requestId": "ok", "id": "nothing", "headers": {}, "body": {}}
        )
        assert await ws.recv() == {"type": "no-active", "requestId": "ok"}


async def test_a_flood_of_frames_is_rate_limited_then_closed(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """Frames beyond WS_MAX_FRAMES_PER_SECOND get rate_limited; sustained abuse closes 1008."""
    config = settings(tmp_path, upstream, ws_max_frames_per_second=1.0, ws_frame_burst=2)
    with running_server(config) as server:
        base = server.url.replace("http", "ws") + "/ws/ai-sdk"
        async with ws_client(base, server.token(), ready=False) as ws:
            for i in range(14):
                await ws.send({"type": "abort", "requestId": f"r{i}"})
            limited = [await ws.recv() for _ in range(10)]
            assert all(f["errorText"].startswith("rate_limited: ") for f in limited)
            assert await ws.closed() == 1008


#: A request that answers at once without a turn: its ``no-active`` shows the socket is signed in.
RESUME_NOTHING = {"type": "resume", "requestId": "r0", "id": "nothing", "headers": {}, "body": {}}


async def healthz(server: RunningServer) -> int:
    async with httpx.AsyncClient(timeout=5) as http:  # a new connection: admission sees it
        return (await http.get(f"{server.url}/healthz")).status_code


async def test_signed_in_sockets_do_not_count_as_pending(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """With HTTP_MAX_PENDING=10, ten signed-in /ws/ai-sdk sockets leave /healthz served
    (200); ten more not signed in fill the cap (503)."""
    with running_server(settings(tmp_path, upstream, http_max_pending=10)) as server:
        base = server.url.replace("http", "ws") + "/ws/ai-sdk"
        async with contextlib.AsyncExitStack() as sockets:
            for i in range(10):
                ws = await sockets.enter_async_context(
                    ws_client(base, server.token(f"user-{i}"), ready=False)
                )
                await ws.send(RESUME_NOTHING)
                assert await ws.recv() == {"type": "no-active", "requestId": "r0"}
            assert await healthz(server) == 200
            for _ in range(10):
                await sockets.enter_async_context(ws_client(base, ready=False))

            async def busy() -> bool:  # the last socket is counted just after its 101
                return await healthz(server) == 503

            assert await eventually(busy)


async def test_origins_outside_the_allow_list_get_403_as_on_ws_chat(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """WS_ALLOWED_ORIGINS set: another Origin gets HTTP 403 at the /ws/ai-sdk handshake,
    as at /ws/chat's; a listed one is served."""
    config = settings(tmp_path, upstream, ws_allowed_origins="https://app.example")
    with running_server(config) as server:
        base = server.url.replace("http", "ws") + "/ws/ai-sdk"
        for url in (server.ws_url, base):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, origin="https://evil.example", open_timeout=5)  # type: ignore[arg-type]
            assert refused.value.response.status_code == 403, url
        async with ws_client(base, server.token(), ready=False, origin="https://app.example") as ws:
            await ws.send(RESUME_NOTHING)
            assert await ws.recv() == {"type": "no-active", "requestId": "r0"}


async def test_no_signed_in_frame_in_time_closes_4408(
    tmp_path: Path, upstream: OpenAIUpstream
) -> None:
    """A socket without the handshake's Authorization that sends nothing for
    WS_AUTH_TIMEOUT seconds is closed 4408, as on /ws/chat; one whose first frame does
    not sign it in (an abort) gets unauthorized and 4401."""
    with running_server(settings(tmp_path, upstream, ws_auth_timeout=1.0)) as server:
        base = server.url.replace("http", "ws") + "/ws/ai-sdk"
        async with ws_client(base, ready=False) as ws:
            assert await ws.closed(timeout=5) == 4408
        async with ws_client(base, ready=False) as ws:
            await ws.send({"type": "abort", "requestId": "r1"})
            refused = await ws.recv()
            assert refused["errorText"].startswith("unauthorized: ")
            assert await ws.closed(timeout=5) == 4401
