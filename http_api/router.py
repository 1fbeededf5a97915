"""Every REST router, in one list."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from . import (
    admin_games,
    admin_page,
    admin_sessions,
    ai_sdk,
    asyncapi,
    docs_pages,
    documents,
    flags,
    games,
    health,
    me,
    usage,
)
from .deps import refuse_nul

api_router = APIRouter(dependencies=[Depends(refuse_nul)])
for module in (
    health,
    docs_pages,
    asyncapi,
    ai_sdk,
    games,
    admin_games,
    documents,
    admin_sessions,
    admin_page,
    flags,
    usage,
    me,
):
    api_router.include_router(module.router)
