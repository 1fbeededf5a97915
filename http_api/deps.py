"""Request dependencies: the shared services and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chat_server.access import is_staff
from chat_server.auth import Principal
from chat_server.errors import Forbidden, InvalidInput, Unauthorized
from chat_server.logs import add_context
from chat_server.services import Services
from chat_server.text import cut

__all__ = ["Caller", "ServicesDep", "Staff", "get_services", "refuse_nul"]

_bearer = HTTPBearer(auto_error=False, description="A Supabase access token (JWT)")


_NUL_MSG = "must not contain NUL characters"


async def refuse_nul(request: Request) -> None:
    """Refuse NUL characters in path and query parameters with 422.

    PostgreSQL cannot store or even compare text holding NUL (the driver raises), so such
    a value is invalid input, never a 500; SQLite behaves the same way through this check.
    """
    errors = [
        {
            "loc": [where, cut(name)],
            "msg": "must not contain NUL characters",
            "type": "nul_character",
        }
        for where, items in (
            ("path", list(request.path_params.items())),
            ("query", request.query_params.multi_items()),
        )
        for name, value in items
        if "\x00" in name or (isinstance(value, str) and "\x00" in value)
    ]
    if errors:
        where = errors[0]["loc"][1].replace("\x00", "\\0")
        raise InvalidInput(f"{where}: {errors[0]['msg']}", context={"errors": errors[:10]})


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
    principal = await services.verifier.verify(credentials.credentials)
    add_context(user_id=principal.user_id)
    return principal


Caller = Annotated[Principal, Depends(caller)]


async def staff(principal: Caller) -> Principal:
    if not is_staff(principal.role):
        raise Forbidden("staff only", error_code="FORBIDDEN")
    return principal


Staff = Annotated[Principal, Depends(staff)]
