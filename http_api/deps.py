"""Request dependencies: the shared services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chat_server.access import is_staff
from chat_server.auth import Principal
from chat_server.errors import Forbidden, Unauthorized
from chat_server.services import Services

__all__ = ["Caller", "ServicesDep", "Staff", "get_services"]

_bearer = HTTPBearer(auto_error=False, description="A Supabase access token (JWT)")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def caller(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Verify the bearer token; every path but health, metrics and docs needs one."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token", error_code="UNAUTHORIZED")
    return await services.verifier.verify(credentials.credentials)


Caller = Annotated[Principal, Depends(caller)]


async def staff(principal: Caller) -> Principal:
    if not is_staff(principal.role):
        raise Forbidden("staff only", error_code="FORBIDDEN")
    return principal


Staff = Annotated[Principal, Depends(staff)]
