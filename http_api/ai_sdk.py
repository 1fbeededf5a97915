"""``/ai-sdk/chat``: the Vercel AI SDK's ``DefaultChatTransport`` (CONTRACT §8).

``POST /ai-sdk/chat`` asks and answers a UI message stream: Server-Sent Events, one
``data: <chunk JSON>`` per chunk, ``data: [DONE]`` at the end, and a comment line
whenever nothing was sent for ``SSE_HEARTBEAT`` seconds (default 10) (load balancers close idle
streams). ``GET /ai-sdk/chat/{id}/stream`` follows the chat's running turn from the
answer's beginning (``start``, ``text-start`` first) or answers 204;
``DELETE /ai-sdk/chat/{id}/stream`` cancels it. Refusals before the turn are the
flat error body (403, 404, 429 ...) from the app's one error mapping. A client that
disconnects only detaches: the turn runs on for the resume grace.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response
from fastapi.responses import StreamingResponse

from chat_server.errors import RateLimited
from chat_server.services import Services
from chat_server.sessions.chat import Who
from chat_server.sessions.protocol import Event
from chat_server.storage.ids import new_id
from chat_server.transports import sse
from chat_server.transports.ai_sdk_answers import (
    Answer,
    ChatLink,
    follow,
    open_chat,
    stop_running,
)
from chat_server.transports.ai_sdk_frames import ChatRequest, question

from .deps import Caller, ServicesDep
from .errors import ERROR_RESPONSES
from .models import ErrorBody

__all__ = ["router"]

HEADERS = {"x-vercel-ai-ui-message-stream": "v1"}  # and the event stream's own
ChatIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
ERRORS: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    **{
        status: {"model": ErrorBody, "description": what}
        for status, what in (
            (403, "The chat feature is switched off for this user (feature_disabled)"),
            (404, "Another user's chat, or a game the user may not see"),
            (409, "A turn of this chat is already running (turn_in_progress)"),
            (
                429,
                "The daily quota is used up (quota_exceeded), or too many requests or "
                "streams at once (rate_limited)",
            ),
        )
    },
}
STREAM: dict[str, Any] = {"content": {"text/event-stream": {}}, "description": "UI message stream"}
router = APIRouter(prefix="/ai-sdk", tags=["ai-sdk"])


def _count(services: Services, user_id: str) -> None:
    """Count one request against the user's rate (``WS_MAX_FRAMES_PER_SECOND``, bursts of
    ``WS_FRAME_BURST``, as a socket's frames): a refused request creates no session,
    writes no refusal and asks no provider."""
    if not services.request_rates.allow(user_id, time.monotonic()):
        raise RateLimited("too many requests; slow down")


async def _take_slot(services: Services, user_id: str) -> str:
    """One of the user's connection slots (``WS_MAX_CONNECTIONS_PER_USER``, on every
    instance, shared with the user's sockets), held for a stream's life."""
    _count(services, user_id)
    slot = new_id()
    if not await services.slots.take(user_id, slot):
        limit = services.settings.ws_max_connections_per_user
        raise RateLimited(f"at most {limit} connections per user")
    return slot


def _sse(
    services: Services, user_id: str, slot: str, link: ChatLink, answer: Answer
) -> StreamingResponse:
    async def end() -> None:
        link.leave()
        await services.slots.release(user_id, slot)

    return sse.EventStream(_events(link, answer, services.settings.sse_heartbeat), end, HEADERS)


def _data(chunks: list[dict[str, Any]]) -> str:
    return "".join(sse.sse_block(json.dumps(c, ensure_ascii=False)) for c in chunks)


async def _events(link: ChatLink, answer: Answer, heartbeat: float) -> AsyncIterator[str]:
    """The answer's chunks as SSE, with heartbeats; a disconnect only detaches."""
    outbox = link.follower.outbox

    def render(event: Event) -> str | None:
        chunks = answer.feed(event)
        if answer.ended:
            outbox.close()  # what is queued is still taken, then the stream ends
        return _data(chunks) if chunks else None

    opening = answer.take_opening()
    if opening:
        yield _data(opening)
    async for block in sse.follow(outbox, render, heartbeat):
        yield block
    yield "data: [DONE]\n\n"


@router.post(
    "/chat",
    summary="Ask (the AI SDK's DefaultChatTransport): a UI message stream over SSE",
    response_class=StreamingResponse,
    responses={200: STREAM, **ERRORS},
)
async def post_chat(request: ChatRequest, principal: Caller, services: ServicesDep) -> Response:
    who = Who(principal.user_id, principal.role)
    text = None if request.trigger == "regenerate-message" else question(request.messages)
    slot = await _take_slot(services, who.user_id)
    link: ChatLink | None = None
    try:
        link = await open_chat(services, who, request.id, request.chat_body())
        answer = await link.ask(text)
    except BaseException:
        if link is not None:
            link.leave()
        await services.slots.release(who.user_id, slot)
        raise
    return _sse(services, who.user_id, slot, link, answer)


@router.get(
    "/chat/{chat_id}/stream",
    summary="Resume: the chat's running answer from its beginning, then live; 204 if none",
    response_class=StreamingResponse,
    responses={200: STREAM, 204: {"description": "No turn of this chat is running"}, **ERRORS},
)
async def resume_chat(chat_id: ChatIdPath, principal: Caller, services: ServicesDep) -> Response:
    slot = await _take_slot(services, principal.user_id)
    try:
        followed = await follow(services, Who(principal.user_id, principal.role), chat_id)
    except BaseException:
        await services.slots.release(principal.user_id, slot)
        raise
    if followed is None:
        await services.slots.release(principal.user_id, slot)
        return Response(status_code=204)
    return _sse(services, principal.user_id, slot, *followed)


@router.delete(
    "/chat/{chat_id}/stream",
    status_code=204,
    response_class=Response,
    summary="Cancel the chat's running turn (wherever it runs)",
    responses=ERRORS,
)
async def stop_chat(chat_id: ChatIdPath, principal: Caller, services: ServicesDep) -> Response:
    _count(services, principal.user_id)
    await stop_running(services, Who(principal.user_id, principal.role), chat_id)
    return Response(status_code=204)
