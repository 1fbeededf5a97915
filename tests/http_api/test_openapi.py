"""``/openapi.json`` describes what is really sent (CONTRACT §3), error bodies included."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bgg_server import FakeBgg
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import ws_client

from .schema_check import Schema
from .support import TIMEOUT, bearer, expect_error

ERROR_REF = "#/components/schemas/ErrorBody"
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/asyncapi.json"}


@pytest.fixture
def bgg() -> Iterator[FakeBgg]:
    with FakeBgg() as fake:
        yield fake


@pytest.fixture
def server(tmp_path: Path, bgg: FakeBgg) -> Iterator[RunningServer]:
    settings = make_settings(tmp_path, bgg_base_url=bgg.base_url, http_max_body_bytes=100_000)
    with running_server(settings) as srv:
        yield srv


@pytest.fixture
def schema(server: RunningServer) -> dict[str, Any]:
    response = httpx.get(server.url + "/openapi.json", timeout=TIMEOUT)
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method in {"get", "put", "post", "patch", "delete"}:
                yield method.upper(), path, op


def test_no_fastapi_validation_error_schema_is_left(schema: dict[str, Any]) -> None:
    """FastAPI's own 422 shapes never appear: 422 is the contract's ErrorBody too."""
    names = set(schema["components"]["schemas"])
    assert not names & {"HTTPValidationError", "ValidationError"}
    assert "HTTPValidationError" not in str(schema)


def test_every_error_status_documents_error_body(schema: dict[str, Any]) -> None:
    """Every 4xx/5xx response of every operation is documented as ErrorBody."""
    for method, path, op in operations(schema):
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                content = response.get("content", {})
                assert list(content) == ["application/json"], (method, path, status)
                assert content["application/json"]["schema"] == {"$ref": ERROR_REF}, (
                    method,
                    path,
                    status,
                )


def test_operations_document_the_errors_they_can_send(schema: dict[str, Any]) -> None:
    """Input means 422, a body 413, a token 401, /admin 403, and a path id 404."""
    for method, path, op in operations(schema):
        statuses = set(op["responses"])
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in statuses, (method, path)
        if op.get("requestBody"):
            assert "413" in statuses, (method, path)
        if path not in OPEN_PATHS:
            assert {"401", "500", "503"} <= statuses, (method, path)
        if path.startswith("/admin"):
            assert "403" in statuses, (method, path)
        if "{" in path:
            assert "404" in statuses, (method, path)


def test_error_body_schema_is_the_contracts(schema: dict[str, Any]) -> None:
    """ErrorBody is exactly detail, error_code and context, all required."""
    error = schema["components"]["schemas"]["ErrorBody"]
    assert set(error["properties"]) == {"detail", "error_code", "context"}
    assert set(error["required"]) == {"detail", "error_code", "context"}


def test_unknown_path_and_method_get_the_error_body(server: RunningServer) -> None:
    """An unknown path is 404 and a wrong method 405, both in the contract's body."""
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        expect_error(http.get("/no/such/path"), 404, "NOT_FOUND")
        expect_error(http.get("/admin/nothing-here"), 404, "NOT_FOUND")
        expect_error(http.post("/games"), 405, "METHOD_NOT_ALLOWED")
        expect_error(http.delete("/healthz"), 405, "METHOD_NOT_ALLOWED")
        docs = http.get("/docs")
        assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]


async def test_real_responses_match_the_schema(
    server: RunningServer, schema: dict[str, Any]
) -> None:
    """A tour of every operation and its errors: each status is documented, each body fits."""
    check = Schema(schema)
    seen: set[tuple[str, str]] = set()
    async with (
        asyncio.timeout(60),
        httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
        ws_client(server.ws_url, server.token("tourist")) as ws,
    ):
        user = bearer(server.token("tourist"))
        staff = bearer(server.token("dev", "developer"))

        async def call(method: str, path: str, expect: int, **kwargs: Any) -> httpx.Response:
            response = await http.request(method, path, **kwargs)
            assert response.status_code == expect, (method, path, response.text)
            check.check(response)
            seen.add((method, check.template(path)))
            return response

        for path in OPEN_PATHS:
            await call("GET", path, 200)
        games = (await call("GET", "/games", 200, headers=user)).json()["games"]
        gid = games[0]["id"]
        await call("GET", "/games", 401)
        await call("GET", "/games", 422, headers=user, params={"limit": 0})
        await call("GET", "/games", 422, headers=user, params={"cursor": "bad"})
        await call("GET", f"/games/{gid}", 200, headers=user)
        await call("GET", "/games/missing", 404, headers=user)

        made = await call(
            "POST", "/admin/games", 201, headers=staff, json={"name": "Tour", "bgg_id": 5}
        )
        await call("POST", "/admin/games", 409, headers=staff, json={"name": "Tour", "bgg_id": 5})
        await call("POST", "/admin/games", 422, headers=staff, json={"name": 5})
        await call("POST", "/admin/games", 403, headers=user, json={"name": "x"})
        new_id = made.json()["id"]
        await call("PATCH", f"/admin/games/{new_id}", 200, headers=staff, json={"status": "beta"})
        await call("PATCH", "/admin/games/missing", 404, headers=staff, json={"name": "x"})
        await call("PATCH", f"/admin/games/{new_id}", 422, headers=staff, json={"status": "x"})
        glossary = {"details": {"glossary": {"Delver": ["worker"]}}}
        await call("PATCH", f"/admin/games/{new_id}", 200, headers=staff, json=glossary)
        await call("GET", f"/admin/games/{new_id}/glossary", 200, headers=staff)
        await call("GET", "/admin/games/missing/glossary", 404, headers=staff)
        await call("GET", f"/admin/games/{new_id}/glossary", 403, headers=user)
        await call("POST", "/admin/games/import", 201, headers=staff, json={"bgg_id": 822})
        await call("POST", "/admin/games/import", 200, headers=staff, json={"bgg_id": 822})
        await call("POST", "/admin/games/import", 404, headers=staff, json={"bgg_id": 777})
        doc = {"title": "Tour rules", "content": "Win by touring."}
        posted = await call(
            "POST", f"/admin/games/{new_id}/documents", 201, headers=staff, json=doc
        )
        docs, doc_id = f"/admin/games/{new_id}/documents", posted.json()["id"]
        await call("GET", docs, 200, headers=staff)
        await call("PUT", f"{docs}/{doc_id}", 200, headers=staff, json=doc)
        await call("PUT", f"{docs}/missing", 404, headers=staff, json=doc)
        await call("GET", f"/games/{new_id}/documents/{doc_id}/file", 200, headers=staff)
        await call("GET", f"/games/{new_id}/documents/{doc_id}/file", 404, headers=user)
        await call("POST", "/admin/games/missing/documents", 404, headers=staff, json=doc)
        big = {**doc, "content": "x" * 200_000}
        await call("POST", f"/admin/games/{new_id}/documents", 413, headers=staff, json=big)
        await call("DELETE", f"{docs}/{doc_id}", 204, headers=staff)
        await call("DELETE", f"{docs}/{doc_id}", 404, headers=staff)

        flag = {"feature_key": "tour", "scope_type": "game", "scope_id": new_id, "enabled": True}
        put = await call("PUT", "/admin/flags", 200, headers=staff, json=flag)
        await call("PUT", "/admin/flags", 422, headers=staff, json={**flag, "scope_id": None})
        await call("GET", "/admin/flags", 200, headers=staff)
        await call("DELETE", f"/admin/flags/{put.json()['id']}", 204, headers=staff)
        await call("DELETE", f"/admin/flags/{put.json()['id']}", 404, headers=staff)

        ready = await ws.start(gid)
        await ws.ask("How do I win?")
        sid = ready["session"]["id"]
        await call("GET", "/me/usage", 200, headers=user, params={"game_id": gid})
        await call("GET", "/me/usage", 404, headers=user, params={"game_id": new_id})
        await call("GET", "/me/usage", 422, headers=user)
        await call("GET", "/me/sessions", 200, headers=user)
        await call("GET", f"/me/sessions/{sid}", 200, headers=user)
        await call("GET", f"/me/sessions/{sid}", 404, headers=staff)
        await call("GET", "/admin/usage", 200, headers=staff)
        await call("GET", "/admin/usage", 422, headers=staff, params={"group_by": "x"})
        await call("GET", "/admin/sessions", 200, headers=staff)
        await call("DELETE", "/admin/sessions/missing", 404, headers=staff)
        await call("GET", f"/admin/sessions/{sid}", 200, headers=staff)
        await call("GET", "/admin/sessions/missing", 404, headers=staff)
        await call("GET", f"/admin/sessions/{sid}", 403, headers=user)
        await call("GET", "/admin/sessions/missing/stream", 404, headers=staff)

        question = [{"id": "q", "role": "user", "parts": [{"type": "text", "text": "Win?"}]}]
        chat = {"id": "tour-chat", "messages": question, "game_id": gid}
        await call("POST", "/ai-sdk/chat", 200, headers=user, json=chat)
        await call("POST", "/ai-sdk/chat", 401, json=chat)
        await call("POST", "/ai-sdk/chat", 422, headers=user, json={**chat, "id": "a/b"})
        await call("POST", "/ai-sdk/chat", 404, headers=staff, json=chat)
        await call("POST", "/ai-sdk/chat", 413, headers=user, json={**chat, "x": "y" * 200_000})
        await call("GET", "/ai-sdk/chat/tour-chat/stream", 204, headers=user)
        await call("GET", "/ai-sdk/chat/tour-chat/stream", 404, headers=staff)
        await call("GET", "/ai-sdk/chat/a.b/stream", 422, headers=user)
        await call("DELETE", "/ai-sdk/chat/tour-chat/stream", 204, headers=user)
        await call("DELETE", "/ai-sdk/chat/missing/stream", 404, headers=user)

    documented = {(m, p) for m, p, _ in operations(schema)}
    # Endless Server-Sent Events streams (their own tests read them).
    streaming = {("GET", "/admin/sessions/events"), ("GET", "/admin/sessions/{session_id}/stream")}
    assert documented - streaming - seen == set(), "the tour missed an operation"
