"""Liveness, readiness and metrics: no token needed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel

from chat_server.errors import Unavailable

from .deps import ServicesDep
from .errors import body
from .models import ErrorBody

router = APIRouter(tags=["health"])

Check = Literal["ok", "unavailable", "in-process"]


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    """Every backing service answered; ``redis`` is ``in-process`` when none is configured."""

    status: Literal["ok"]
    checks: dict[str, Check]


@router.get("/healthz", response_model=HealthOut, summary="The process is up")
async def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Database and Redis are reachable",
    responses={
        503: {
            "model": ErrorBody,
            "description": "A backing service failed: ``context.failed`` names which, "
            "``context.checks`` gives every result",
        }
    },
)
async def readyz(services: ServicesDep) -> JSONResponse:
    checks: dict[str, Check] = {}

    async def check(name: str, probe: Awaitable[None]) -> None:
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
    checks = dict(sorted(checks.items()))
    failed = [name for name, result in checks.items() if result == "unavailable"]
    if failed:
        detail = f"not ready: {', '.join(failed)} unavailable"
        context = {"checks": checks, "failed": failed}
        return JSONResponse(body(detail, "UNAVAILABLE", context), status_code=503)
    return JSONResponse(ReadyOut(status="ok", checks=checks).model_dump(), status_code=200)


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format; OpenMetrics when the scraper asks for it)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(REGISTRY), headers={"Content-Type": content_type})
