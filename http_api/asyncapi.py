"""``GET /asyncapi.json``: the AsyncAPI 3.0 description of ``/ws/chat``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from chat_server.asyncapi import asyncapi_document

router = APIRouter(tags=["meta"])


@router.get(
    "/asyncapi.json",
    summary="The WebSocket protocol of /ws/chat as an AsyncAPI 3.0 document",
    response_model=None,
)
async def asyncapi() -> dict[str, Any]:
    return asyncapi_document()
