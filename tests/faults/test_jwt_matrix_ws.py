"""The JWT attack matrix over the WebSocket (REST: tests/http_api/test_auth_rest.py).

The server is set up like a Supabase project with both key families (an HS256 secret
and a loopback JWKS) and ``SUPABASE_URL``, so the issuer is enforced. Every forged,
expired or misdirected token is refused, on the handshake header and in the ``auth``
frame alike, with the contract's code and close 4401; no token makes anyone admin.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
from websockets.asyncio.client import connect

from tests.jwks_server import JWKSServer
from tests.jwt_cases import ADMIN, Claims, by_hand, ec_key, hs256, sign, tampered
from tests.server import RunningServer, make_settings, running_server
from tests.wsclient import Client, ws_client

pytestmark = pytest.mark.faults

SUPABASE_URL = "http://127.0.0.1:9"
ISSUER = SUPABASE_URL + "/auth/v1"

PUBLISHED = ec_key("published")
STRANGER = ec_key("stranger")
claims = Claims(ISSUER, sub="mallory")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with JWKSServer({"keys": [PUBLISHED.jwk]}) as jwks:
        settings = make_settings(
            tmp_path_factory.mktemp("jwt"), supabase_url=SUPABASE_URL, supabase_jwks_url=jwks.url
        )
        with running_server(settings) as srv:
            yield srv


UNAUTHORIZED, EXPIRED = "unauthorized", "token_expired"


def ago(seconds: int) -> int:
    return int(time.time()) - seconds


def confused() -> str:
    """Algorithm confusion: HS256 keyed with the published public key, claiming admin."""
    header = {"alg": "HS256", "typ": "JWT", "kid": PUBLISHED.kid}
    return by_hand(header, claims(**ADMIN), PUBLISHED.public_pem)


REFUSED: dict[str, tuple[Callable[[], str], str]] = {
    "no token at all": (lambda: "", UNAUTHORIZED),
    "not a JWT": (lambda: "not-a-token", UNAUTHORIZED),
    "alg none": (lambda: by_hand({"alg": "none"}, claims(**ADMIN), None), UNAUTHORIZED),
    "HS256 header, no signature": (lambda: hs256(claims()).rsplit(".", 1)[0] + ".", UNAUTHORIZED),
    "HS256 signed with the published public key": (confused, UNAUTHORIZED),
    "expired": (lambda: hs256(claims(exp=ago(3600))), EXPIRED),
    "expired ES256": (lambda: sign(PUBLISHED, claims(exp=ago(3600))), EXPIRED),
    "expired beyond the leeway": (lambda: hs256(claims(exp=ago(30))), EXPIRED),
    "wrong aud": (lambda: hs256(claims(aud="anon")), UNAUTHORIZED),
    "no aud": (lambda: hs256(claims(aud=None)), UNAUTHORIZED),
    "wrong iss": (lambda: hs256(claims(iss="https://evil.example/auth/v1")), UNAUTHORIZED),
    "no iss": (lambda: hs256(claims(iss=None)), UNAUTHORIZED),
    "no sub": (lambda: hs256(claims(sub=None)), UNAUTHORIZED),
    "tampered HS256": (lambda: tampered(hs256(claims()), claims(**ADMIN)), UNAUTHORIZED),
    "tampered ES256": (
        lambda: tampered(sign(PUBLISHED, claims()), claims(**ADMIN)),
        UNAUTHORIZED,
    ),
    "unknown kid": (lambda: sign(STRANGER, claims(**ADMIN)), UNAUTHORIZED),
    "published kid, another key": (
        lambda: sign(STRANGER, claims(**ADMIN), kid=PUBLISHED.kid),
        UNAUTHORIZED,
    ),
    "another HS256 secret": (
        lambda: hs256(claims(**ADMIN), "another-secret-" + "x" * 40),
        UNAUTHORIZED,
    ),
}


@pytest.mark.parametrize("transport", ["header", "auth frame"])
@pytest.mark.parametrize("case", list(REFUSED))
async def test_refused_token_gets_its_code_and_close_4401(
    server: RunningServer, case: str, transport: str
) -> None:
    """A bad token: one `error` frame with the contract's code, then close 4401."""
    make, code = REFUSED[case]
    token = make()
    if transport == "header":
        headers = {"Authorization": f"Bearer {token}"}
        async with connect(
            server.ws_url, additional_headers=headers, open_timeout=10, close_timeout=5
        ) as ws:
            client = Client(ws)
            error = await client.expect("error")
            assert await client.closed() == 4401
    else:
        async with ws_client(server.ws_url) as client:
            await client.send({"type": "auth", "token": token} if token else {"type": "auth"})
            error = await client.expect("error")
            assert await client.closed() == 4401
    assert error["code"] == code, error
    if token:
        assert token not in json.dumps(error)


FORGED_ROLES: dict[str, Callable[[], str]] = {
    "user_metadata role": lambda: hs256(claims(user_metadata={"role": "admin"})),
    "user_metadata role, ES256": lambda: sign(PUBLISHED, claims(user_metadata={"role": "admin"})),
    "user_metadata user_role": lambda: hs256(claims(user_metadata={"user_role": "admin"})),
    "service_role postgres role": lambda: hs256(claims(role="service_role")),
    "role claim admin": lambda: hs256(claims(role="admin")),
}


@pytest.mark.parametrize("case", list(FORGED_ROLES))
async def test_forged_role_claims_never_make_an_admin(server: RunningServer, case: str) -> None:
    """A role the user can write (user_metadata) or the Postgres `role` claim: the
    connection is a basic user's."""
    async with ws_client(server.ws_url, FORGED_ROLES[case](), ready=False) as client:
        ready = await client.expect("ready")
    assert ready["role"] == "basic"
    assert ready["user_id"] == "mallory"


async def test_refresh_with_a_forged_token_changes_nothing(server: RunningServer) -> None:
    """A later `auth` frame with a tampered admin token is refused; the connection keeps
    the user's own role and stays usable."""
    async with ws_client(server.ws_url, hs256(claims()), ready=False) as client:
        assert (await client.expect("ready"))["role"] == "basic"
        await client.send({"type": "auth", "token": tampered(hs256(claims()), claims(**ADMIN))})
        error = await client.expect("error")
        assert error["code"] == "unauthorized"
        await client.send({"type": "ping", "id": "still-here"})
        assert (await client.expect("pong"))["id"] == "still-here"
        await client.send({"type": "auth", "token": hs256(claims(**ADMIN, sub="someone-else"))})
        assert (await client.expect("error"))["code"] == "forbidden"
        assert await client.closed() == 4403
