"""Roles over REST (CONTRACT §1): where the role comes from, and who may use ``/admin/*``."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from chat_server.storage.profiles import set_role
from tests.server import SECRET, RunningServer, make_settings, running_server

from .support import TIMEOUT, bearer, client, expect_error

# Health, metrics and the protocol description (like /openapi.json) are open to anyone.
OPEN_PATHS = {"/healthz", "/readyz", "/metrics", "/asyncapi.json"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(make_settings(tmp_path)) as srv:
        yield srv


def token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "user-1", "aud": "authenticated", "iat": now, "exp": now + 600, **claims}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def operations(server: RunningServer) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (method, path, operation) of the server's own ``/openapi.json``."""
    schema = httpx.get(server.url + "/openapi.json", timeout=TIMEOUT).json()
    return [
        (method.upper(), path, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in {"get", "put", "post", "patch", "delete"}
    ]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "some-id", path)


def test_user_metadata_role_is_ignored(server: RunningServer) -> None:
    """A user who writes ``role: admin`` in their own user_metadata stays basic: 403."""
    forged = token(sub="mallory", role="admin", user_metadata={"role": "admin"})
    with httpx.Client(base_url=server.url, headers=bearer(forged), timeout=TIMEOUT) as http:
        assert http.get("/games").status_code == 200
        expect_error(http.get("/admin/flags"), 403, "FORBIDDEN")


def test_profiles_role_is_used_without_a_claim(server: RunningServer) -> None:
    """With no role claim, the user's ``profiles`` row decides: a developer gets in."""
    server.call(set_role(server.services.db, "profiled", "developer"))
    with httpx.Client(
        base_url=server.url, headers=bearer(token(sub="profiled")), timeout=TIMEOUT
    ) as http:
        response = http.get("/admin/flags")
        assert response.status_code == 200, response.text


def test_claim_beats_profiles_row(server: RunningServer) -> None:
    """A ``user_role`` claim wins over the profiles row (here: admin row, basic claim)."""
    server.call(set_role(server.services.db, "demoted", "admin"))
    with httpx.Client(
        base_url=server.url,
        headers=bearer(token(sub="demoted", user_role="basic")),
        timeout=TIMEOUT,
    ) as http:
        expect_error(http.get("/admin/flags"), 403, "FORBIDDEN")


def test_app_metadata_role_is_used(server: RunningServer) -> None:
    """``app_metadata.role`` (set by the server side only) grants staff access."""
    with httpx.Client(
        base_url=server.url,
        headers=bearer(token(sub="meta", app_metadata={"role": "admin"})),
        timeout=TIMEOUT,
    ) as http:
        assert http.get("/admin/flags").status_code == 200


def test_no_claim_no_profile_is_basic(server: RunningServer) -> None:
    """A user with neither a role claim nor a profiles row is basic: 403 on /admin."""
    with httpx.Client(
        base_url=server.url, headers=bearer(token(sub="nobody")), timeout=TIMEOUT
    ) as http:
        expect_error(http.get("/admin/flags"), 403, "FORBIDDEN")


@pytest.mark.parametrize("role", ["admin", "developer"])
def test_staff_pass_admin_routes(server: RunningServer, role: str) -> None:
    """Admins and developers can list flags and usage and create games."""
    with client(server, f"{role}-1", role) as http:
        assert http.get("/admin/flags").status_code == 200
        assert http.get("/admin/usage").status_code == 200
        created = http.post("/admin/games", json={"name": f"Made by {role}"})
        assert created.status_code == 201, created.text


@pytest.mark.parametrize("role", ["basic", "moderator", "Admin", "authenticated"])
def test_non_staff_get_403_on_every_admin_path(server: RunningServer, role: str) -> None:
    """Every ``/admin`` operation in the schema answers 403 FORBIDDEN to a non-staff role."""
    admin_ops = [(m, p) for m, p, _ in operations(server) if p.startswith("/admin")]
    assert len(admin_ops) >= 7
    with client(server, "plain", role) as http:
        for method, path in admin_ops:
            body: dict[str, Any] | None = {} if method in {"POST", "PUT", "PATCH"} else None
            response = http.request(method, concrete(path), json=body)
            expect_error(response, 403, "FORBIDDEN")


def test_every_non_health_operation_needs_a_token(server: RunningServer) -> None:
    """Every operation but health, metrics and /asyncapi.json declares bearer auth and
    answers 401 without."""
    ops = operations(server)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        for method, path, op in ops:
            if path in OPEN_PATHS:
                assert not op.get("security"), path
                continue
            assert op.get("security") == [{"HTTPBearer": []}], (method, path)
            response = http.request(method, concrete(path), params={"game_id": "x"})
            expect_error(response, 401, "UNAUTHORIZED")
