"""Staff: live sessions on every instance, their event feed (SSE), watching one (SSE),
and ending one."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from chat_server.auth import Principal
from chat_server.errors import BadRequest, NotFound
from chat_server.frames import encode
from chat_server.sessions.follower import Follower
from chat_server.sessions.outbox import Outbox
from chat_server.sessions.protocol import Event
from chat_server.storage import chat as store
from chat_server.storage.games import get_game
from chat_server.storage.ids import new_id
from chat_server.storage.pages import decode_cursor, encode_cursor
from chat_server.transports.sse import KEEPALIVE_SECONDS, EventStream, follow, sse_block

from .deps import ServicesDep, Staff
from .errors import ERROR_RESPONSES
from .me import MessageOut, SessionOut
from .models import ErrorBody

router = APIRouter(
    prefix="/admin/sessions",
    tags=["admin"],
    responses={**ERROR_RESPONSES, 403: {"model": ErrorBody, "description": "Not staff"}},
)
# The ids the feed gives: a counter in process, a Redis Stream id ("ms-seq") on Redis.
_EVENT_ID = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20})?")
_SEQ = re.compile(r"[0-9]{1,20}")
WATCHED = frozenset({"turn.started", "turn.delta", "turn.completed"})


class LiveSessionOut(BaseModel):
    id: str
    user_id: str
    game_id: str
    game_name: str | None = None
    instance: str
    connection_id: str | None = None
    connected_at: datetime
    last_activity_at: datetime
    turns: int
    streaming: bool
    provider: str
    turn_id: str | None = None
    tokens: int = 0
    first_token_ms: int | None = None
    connections: int = 1
    """How many client connections follow the session, on every instance."""


class LiveSessionsPage(BaseModel):
    sessions: list[LiveSessionOut]
    next_cursor: str | None


@router.get("", response_model=LiveSessionsPage, summary="Live sessions on every instance")
async def list_live(
    _staff: Staff,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> LiveSessionsPage:
    sessions = sorted(await services.registry.list(), key=lambda s: s["id"])
    if cursor:
        (after,) = decode_cursor(cursor, 1)
        sessions = [s for s in sessions if s["id"] > after]
    page = sessions[:limit]
    next_cursor = encode_cursor(page[-1]["id"]) if len(sessions) > limit else None
    return LiveSessionsPage(sessions=[LiveSessionOut(**s) for s in page], next_cursor=next_cursor)


@router.get(
    "/events",
    summary="Live feed (Server-Sent Events): session.started, turn.started, turn.completed, "
    "session.ended; send Last-Event-ID to resume",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "An SSE stream"},
        400: {"model": ErrorBody, "description": "Malformed Last-Event-ID"},
    },
)
async def events(
    request: Request,
    staff: Staff,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    if last_event_id is not None and not _EVENT_ID.fullmatch(last_event_id):
        raise BadRequest(
            "Last-Event-ID is not an event id of this feed (digits, or digits-digits)",
            context={"header": "Last-Event-ID"},
        )

    async def stream() -> AsyncGenerator[str]:
        yield "retry: 2000\n\n"
        async for batch in services.monitor.events.subscribe(last_event_id, wait=KEEPALIVE_SECONDS):
            if await request.is_disconnected():
                return
            if not batch:
                yield ": keep-alive\n\n"
            for event_id, kind, data in batch:
                yield f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, default=str)}\n\n"

    return EventStream(_while_valid(staff, services.settings.jwt_leeway, stream()))


async def _while_valid(
    staff: Principal, leeway: float, blocks: AsyncGenerator[str]
) -> AsyncGenerator[str]:
    """``blocks`` until the token that opened the stream expires (as a WebSocket is
    closed then): a feed does not outlive the right to read it; the client asks again
    with a fresh token (and its Last-Event-ID) to go on."""
    deadline = staff.expires_at + leeway
    try:
        while (remaining := deadline - time.time()) > 0:
            try:
                block = await asyncio.wait_for(anext(blocks), remaining)
            except (StopAsyncIteration, TimeoutError):
                return
            yield block
    finally:
        await blocks.aclose()


class WatchedSession(SessionOut):
    user_id: str
    game_name: str | None


class WatchedSessionDetail(BaseModel):
    session: WatchedSession
    messages: list[MessageOut]
    """The latest messages, oldest first; a running answer with the text so far."""


@router.get(
    "/{session_id}",
    response_model=WatchedSessionDetail,
    responses={404: {"model": ErrorBody, "description": "No such session"}},
    summary="One session of any user, with its latest messages (what the watch view shows)",
)
async def watched_session(
    session_id: Annotated[str, Path(max_length=64)],
    _staff: Staff,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> WatchedSessionDetail:
    session = await store.get_session(services.db, session_id)
    if session is None:
        raise NotFound("session not found", error_code="SESSION_NOT_FOUND")
    game = await get_game(services.db, session["game_id"])
    messages = await store.history(services.db, session_id, limit=limit)
    turn = services.hub.running(session_id)
    if turn is not None:
        for message in messages:
            if message["id"] == turn.message_id:
                message["content"] = turn.text
    out = WatchedSession(**session, game_name=game["name"] if game else None)
    return WatchedSessionDetail(session=out, messages=[MessageOut(**m) for m in messages])


def _last_event(value: str | None) -> tuple[str, int] | None:
    """``<turn_id>:<seq>`` from a Last-Event-ID header; None when absent; 400 when
    malformed (a client that would resume must not silently start over)."""
    if value is None:
        return None
    turn_id, _, seq = value.rpartition(":")
    if not turn_id or not _SEQ.fullmatch(seq):
        raise BadRequest(
            "Last-Event-ID is not an event id of this stream (<turn_id>:<seq>)",
            context={"header": "Last-Event-ID"},
        )
    return turn_id, int(seq)


class _Renderer:
    """A watch's events as SSE blocks, ``id: <turn_id>:<seq>`` (``turn.started`` is
    seq 0, ``turn.completed`` the turn's last seq)."""

    __slots__ = ("seqs",)

    def __init__(self) -> None:
        self.seqs: dict[str, int] = {}

    def __call__(self, event: Event) -> str | None:
        kind = event["type"]
        if kind not in WATCHED:
            return None
        turn_id = event["turn_id"]
        if kind == "turn.delta":
            seq = self.seqs[turn_id] = event["seq"]
        elif kind == "turn.started":
            seq = self.seqs[turn_id] = 0
        else:
            seq = self.seqs.pop(turn_id, 0)
        return sse_block(encode(event), event=kind, event_id=f"{turn_id}:{seq}")


@router.get(
    "/{session_id}/stream",
    summary="Watch one live session (Server-Sent Events): turn.started, turn.delta, "
    "turn.completed with the WebSocket frames' JSON, from any instance; the id is "
    "<turn_id>:<seq>, send Last-Event-ID to resume; a comment line every 15 s of quiet",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "An SSE stream"},
        400: {"model": ErrorBody, "description": "Malformed Last-Event-ID"},
        404: {"model": ErrorBody, "description": "No such session"},
    },
)
async def watch(
    session_id: Annotated[str, Path(max_length=64)],
    staff: Staff,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(max_length=200)] = None,
) -> StreamingResponse:
    follower = Follower(new_id(), "watch", Outbox(max_frames=256))
    hub = services.hub
    await hub.watch(session_id, follower, _last_event(last_event_id))

    async def stream() -> AsyncGenerator[str]:
        yield "retry: 2000\n\n"
        async for block in follow(follower.outbox, _Renderer(), KEEPALIVE_SECONDS):
            yield block

    blocks = _while_valid(staff, services.settings.jwt_leeway, stream())
    return EventStream(blocks, lambda: hub.unwatch(session_id, follower))


@router.delete(
    "/{session_id}",
    status_code=204,
    response_class=Response,
    responses={404: {"model": ErrorBody, "description": "Not live"}},
    summary="End that session's connection (close 4000) wherever it runs",
)
async def kill(
    session_id: str,
    staff: Staff,
    services: ServicesDep,
    reason: Annotated[str | None, Query(max_length=500)] = None,
) -> Response:
    await services.monitor.kill(session_id, actor_id=staff.user_id, reason=reason)
    return Response(status_code=204)
