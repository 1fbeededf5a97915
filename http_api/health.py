"""Liveness, readiness and metrics: no token needed."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chat_server.errors import Unavailable

from .deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Database and Redis are reachable",
    responses={503: {"description": "Which backing service failed"}},
)
async def readyz(services: ServicesDep) -> JSONResponse:
    checks: dict[str, Any] = {}

    async def check(name: str, probe: Any) -> None:
        try:
            await probe
            checks[name] = "ok"
        except (Unavailable, TimeoutError, OSError):
            checks[name] = "unavailable"

    probes = [check("database", services.db.ping())]
    if services.redis is not None:
        probes.append(check("redis", services.quotas.ping()))
    else:
        checks["redis"] = "in-process"
    await asyncio.gather(*probes)
    failed = [k for k, v in checks.items() if v == "unavailable"]
    body = {"status": "unavailable" if failed else "ok", "checks": checks, "failed": failed}
    return JSONResponse(body, status_code=503 if failed else 200)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
