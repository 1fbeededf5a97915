"""The JWT attack matrix over the WebSocket (REST: tests/http_api/test_auth_rest.py).

The server is set up like a Supabase project with both key families (an HS256 secret
and a loopback JWKS) and ``SUPABASE_URL``, so the issuer is enforced. Every forged,
expired or misdirected token is refused, on the handshake header and in the ``auth``
frame alike, with the contract's code and close 4401; no token makes anyone admin.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from websockets.asyncio.client import connect

from tests.jwks_server import JWKSServer
from tests.server import SECRET, RunningServer, make_settings, running_server
from tests.wsclient import Client, ws_client

pytestmark = pytest.mark.faults

SUPABASE_URL = "http://127.0.0.1:9"
ISSUER = SUPABASE_URL + "/auth/v1"


@dataclass(frozen=True)
class Key:
    kid: str
    private: ec.EllipticCurvePrivateKey
    public_pem: bytes
    jwk: dict[str, Any]


def ec_key(kid: str) -> Key:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Key(kid, private, pem, {**jwk, "kid": kid, "alg": "ES256", "use": "sig"})


PUBLISHED = ec_key("published")
STRANGER = ec_key("stranger")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with JWKSServer({"keys": [PUBLISHED.jwk]}) as jwks:
        settings = make_settings(
            tmp_path_factory.mktemp("jwt"), supabase_url=SUPABASE_URL, supabase_jwks_url=jwks.url
        )
        with running_server(settings) as srv:
            yield srv


def claims(**overrides: Any) -> dict[str, Any]:
    """Supabase-shaped claims; a None override drops the claim."""
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "mallory",
        "aud": "authenticated",
        "role": "authenticated",
        "iss": ISSUER,
        "iat": now,
        "exp": now + 3600,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any]) -> str:
    return jwt.encode(payload, SECRET, algorithm="HS256")


def es256(key: Key, payload: dict[str, Any], kid: str | None = None) -> str:
    return jwt.encode(payload, key.private, algorithm="ES256", headers={"kid": kid or key.kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def by_hand(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token pyjwt refuses to make: ``alg: none``, or a public key used as HMAC secret."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def tampered(token: str) -> str:
    """The header and signature of a real token over a payload that now claims admin."""
    header, _, signature = token.split(".")
    forged = claims(user_role="admin", app_metadata={"role": "admin"})
    return f"{header}.{_b64(json.dumps(forged).encode())}.{signature}"


ADMIN = {"user_role": "admin", "app_metadata": {"role": "admin"}}
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
    "expired ES256": (lambda: es256(PUBLISHED, claims(exp=ago(3600))), EXPIRED),
    "expired beyond the leeway": (lambda: hs256(claims(exp=ago(30))), EXPIRED),
    "wrong aud": (lambda: hs256(claims(aud="anon")), UNAUTHORIZED),
    "no aud": (lambda: hs256(claims(aud=None)), UNAUTHORIZED),
    "wrong iss": (lambda: hs256(claims(iss="https://evil.example/auth/v1")), UNAUTHORIZED),
    "no iss": (lambda: hs256(claims(iss=None)), UNAUTHORIZED),
    "no sub": (lambda: hs256(claims(sub=None)), UNAUTHORIZED),
    "tampered HS256": (lambda: tampered(hs256(claims())), UNAUTHORIZED),
    "tampered ES256": (lambda: tampered(es256(PUBLISHED, claims())), UNAUTHORIZED),
    "unknown kid": (lambda: es256(STRANGER, claims(**ADMIN)), UNAUTHORIZED),
    "published kid, another key": (
        lambda: es256(STRANGER, claims(**ADMIN), kid=PUBLISHED.kid),
        UNAUTHORIZED,
    ),
    "another HS256 secret": (
        lambda: jwt.encode(claims(**ADMIN), "another-secret-" + "x" * 40, algorithm="HS256"),
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
    "user_metadata role, ES256": lambda: es256(PUBLISHED, claims(user_metadata={"role": "admin"})),
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
        await client.send({"type": "auth", "token": tampered(hs256(claims()))})
        error = await client.expect("error")
        assert error["code"] == "unauthorized"
        await client.send({"type": "ping", "id": "still-here"})
        assert (await client.expect("pong"))["id"] == "still-here"
        await client.send({"type": "auth", "token": hs256(claims(**ADMIN, sub="someone-else"))})
        assert (await client.expect("error"))["code"] == "forbidden"
        assert await client.closed() == 4403
