"""A user's own chat sessions and their messages (of the games the user may still see)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from chat_server.access import visible_statuses
from chat_server.errors import NotFound
from chat_server.storage import chat as store

from .deps import Caller, ServicesDep
from .errors import ERROR_RESPONSES
from .models import ErrorBody

router = APIRouter(prefix="/me", tags=["me"], responses=ERROR_RESPONSES)


class SessionOut(BaseModel):
    id: str
    game_id: str
    language: str
    provider: str
    model: str
    created_at: datetime


class SessionsPage(BaseModel):
    sessions: list[SessionOut]
    next_cursor: str | None


class MessageOut(BaseModel):
    id: str
    role: str
    content: str
    status: str
    created_at: datetime
    turn_id: str
    citations: list[dict[str, Any]] | None = None
    finish_reason: str | None = None


class SessionDetail(BaseModel):
    session: SessionOut
    messages: list[MessageOut]


@router.get("/sessions", response_model=SessionsPage, summary="My sessions, newest first")
async def my_sessions(
    principal: Caller,
    services: ServicesDep,
    game_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> SessionsPage:
    page, next_cursor = await store.list_sessions(
        services.db,
        user_id=principal.user_id,
        game_id=game_id,
        limit=limit,
        cursor=cursor,
        statuses=visible_statuses(principal.role),
    )
    return SessionsPage(sessions=[SessionOut(**s) for s in page], next_cursor=next_cursor)


@router.get(
    "/sessions/{session_id}",
    response_model=SessionDetail,
    responses={404: {"model": ErrorBody}},
    summary="One of my sessions",
)
async def my_session(session_id: str, principal: Caller, services: ServicesDep) -> SessionDetail:
    session = await store.get_session(
        services.db, session_id, statuses=visible_statuses(principal.role)
    )
    if session is None or session["user_id"] != principal.user_id:
        raise NotFound("session not found", error_code="SESSION_NOT_FOUND")
    messages = await store.history(services.db, session_id, limit=1000)
    live = services.manager.running_in_session(session_id)
    if live is not None:
        for message in messages:
            if message["id"] == live.turn.message_id:
                message.update(live.turn.live_message())
    return SessionDetail(
        session=SessionOut(**session), messages=[MessageOut(**m) for m in messages]
    )
