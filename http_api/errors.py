"""Errors to responses, in one place: every body is ``{"detail", "error_code", "context"}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chat_server.errors import ChatServerError
from chat_server.text import cut

from .models import ErrorBody

__all__ = ["ERROR_RESPONSES", "install_error_handlers"]

log = logging.getLogger(__name__)

_MAX_ERRORS = 10
_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        401: "Missing, invalid or expired token",
        413: "Request body larger than HTTP_MAX_BODY_BYTES",
        422: "Invalid request",
        500: "Internal error",
        503: "Database or Redis unavailable",
    }.items()
}


def body(detail: str, error_code: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"detail": detail, "error_code": error_code, "context": context or {}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ChatServerError)
    async def domain_error(_request: Request, exc: ChatServerError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(
            body(exc.message, exc.error_code, exc.context),
            status_code=exc.status_code,
            headers=headers,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Locations may hold a client's keys: each cut to ECHO_CHARS, and a few errors
        # at most (a body of 10,000 unknown keys is not echoed back 10,000 times).
        errors = [
            {
                "loc": [cut(str(p)) for p in err.get("loc", ())],
                "msg": cut(str(err.get("msg", "")).removeprefix("Value error, ")),
                "type": str(err.get("type", "")),
            }
            for err in exc.errors()[:_MAX_ERRORS]
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = cut(".".join(first["loc"][1:] or first["loc"]) or "request")
        msg = str(first["msg"])
        return JSONResponse(
            body(f"{where}: {msg}", "VALIDATION_ERROR", {"errors": errors}), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's "error parsing the body" (a body that is not UTF-8, say) is invalid
            # input just like malformed JSON, which FastAPI answers 422: answer the same.
            error = {"loc": ["body"], "msg": str(exc.detail), "type": "body_unreadable"}
            return JSONResponse(
                body(f"body: {exc.detail}", "VALIDATION_ERROR", {"errors": [error]}),
                status_code=422,
            )
        code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
        return JSONResponse(
            body(str(exc.detail), code),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return JSONResponse(
            body("internal error", "INTERNAL_ERROR"),
            status_code=500,
            headers={"X-Content-Type-Options": "nosniff"},  # outside InputGuard, which adds it
        )
