"""Staff: feature flags. A change is in force on every instance within a second."""

from __future__ import annotations

from fastapi import APIRouter, Response

from chat_server.errors import NotFound
from chat_server.storage import flags as store

from .deps import ServicesDep, Staff
from .errors import ERROR_RESPONSES
from .models import ErrorBody, FlagIn, FlagOut, FlagsOut

router = APIRouter(
    prefix="/admin/flags",
    tags=["admin"],
    responses={**ERROR_RESPONSES, 403: {"model": ErrorBody, "description": "Not staff"}},
)


@router.get("", response_model=FlagsOut, summary="Every flag, of every environment")
async def list_flags(_staff: Staff, services: ServicesDep) -> FlagsOut:
    flags = await store.list_flags(services.db)
    return FlagsOut(flags=[FlagOut(**f.to_dict()) for f in flags])


@router.put(
    "",
    response_model=FlagOut,
    summary="Create or replace the flag with this feature, scope, role, environment",
)
async def put_flag(body: FlagIn, _staff: Staff, services: ServicesDep) -> FlagOut:
    flag = await store.upsert_flag(
        services.db,
        feature_key=body.feature_key,
        scope_type=body.scope_type,
        scope_id=body.scope_id,
        role=body.role,
        environment=body.environment or services.settings.environment,
        enabled=body.enabled,
        metadata=body.metadata,
    )
    await services.flags.changed()
    return FlagOut(**flag.to_dict())


@router.delete(
    "/{flag_id}",
    status_code=204,
    response_class=Response,
    responses={404: {"model": ErrorBody}},
    summary="Delete a flag",
)
async def delete_flag(flag_id: str, _staff: Staff, services: ServicesDep) -> Response:
    if not await store.delete_flag(services.db, flag_id):
        raise NotFound("flag not found", error_code="FLAG_NOT_FOUND")
    await services.flags.changed()
    return Response(status_code=204)
