"""Tokens over REST (CONTRACT §1, §3): every refusal is a 401 with the contract's body.

The server is configured like a Supabase project with both key families: the legacy
HS256 secret and a JWKS (a loopback ``JWKSServer``), with ``SUPABASE_URL`` set so the
issuer is enforced.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.jwks_server import JWKSServer
from tests.jwt_cases import ADMIN, Claims, KeyPair, by_hand, ec_key, hs256, sign, tampered
from tests.server import RunningServer, make_settings, running_server

from .support import TIMEOUT, expect_error

SUPABASE_URL = "http://127.0.0.1:9"
ISSUER = SUPABASE_URL + "/auth/v1"
claims = Claims(ISSUER)


@dataclass(frozen=True)
class Keys:
    published: KeyPair
    stranger: KeyPair


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(published=ec_key("ec-published"), stranger=ec_key("ec-stranger"))


@pytest.fixture(scope="module")
def jwks(keys: Keys) -> Iterator[JWKSServer]:
    with JWKSServer({"keys": [keys.published.jwk]}) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, jwks: JWKSServer) -> Iterator[RunningServer]:
    """One server for the module: these tests only read."""
    settings = make_settings(
        tmp_path_factory.mktemp("auth"), supabase_url=SUPABASE_URL, supabase_jwks_url=jwks.url
    )
    with running_server(settings) as srv:
        yield srv


REFUSED: dict[str, tuple[Callable[[Keys], str], str]] = {
    "expired": (lambda k: hs256(claims(exp=int(time.time()) - 3600)), "TOKEN_EXPIRED"),
    "expired ES256": (
        lambda k: sign(k.published, claims(exp=int(time.time()) - 3600)),
        "TOKEN_EXPIRED",
    ),
    "expired beyond the 10 s leeway": (
        lambda k: hs256(claims(exp=int(time.time()) - 30)),
        "TOKEN_EXPIRED",
    ),
    "not valid before an hour from now": (
        lambda k: hs256(claims(nbf=int(time.time()) + 3600)),
        "UNAUTHORIZED",
    ),
    "wrong aud": (lambda k: hs256(claims(aud="anon")), "UNAUTHORIZED"),
    "no aud": (lambda k: hs256(claims(aud=None)), "UNAUTHORIZED"),
    "wrong iss": (lambda k: hs256(claims(iss="https://evil.example/auth/v1")), "UNAUTHORIZED"),
    "no iss": (lambda k: hs256(claims(iss=None)), "UNAUTHORIZED"),
    "alg none": (lambda k: by_hand({"alg": "none", "typ": "JWT"}, claims(), None), "UNAUTHORIZED"),
    "HS256 signed with the public key PEM": (
        lambda k: by_hand(
            {"alg": "HS256", "typ": "JWT", "kid": k.published.kid},
            claims(user_role="admin"),
            k.published.public_pem,
        ),
        "UNAUTHORIZED",
    ),
    "tampered HS256 payload": (
        lambda k: tampered(hs256(claims()), claims(**ADMIN)),
        "UNAUTHORIZED",
    ),
    "tampered ES256 payload": (
        lambda k: tampered(sign(k.published, claims()), claims(**ADMIN)),
        "UNAUTHORIZED",
    ),
    "unknown kid": (lambda k: sign(k.stranger, claims()), "UNAUTHORIZED"),
    "published kid, other key": (
        lambda k: sign(k.stranger, claims(), kid=k.published.kid),
        "UNAUTHORIZED",
    ),
    "another HS256 secret": (
        lambda k: hs256(claims(), "another-secret-" + "x" * 40),
        "UNAUTHORIZED",
    ),
    "not a JWT": (lambda k: "not-a-token", "UNAUTHORIZED"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_token_is_401_with_its_error_code(
    case: str, keys: Keys, server: RunningServer
) -> None:
    """A bad token gets 401, the contract's body, its error_code and a Bearer challenge."""
    make, error_code = REFUSED[case]
    token = make(keys)
    for path in ("/games", "/admin/flags", "/me/sessions"):
        response = httpx.get(
            server.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
        )
        body = expect_error(response, 401, error_code)
        assert response.headers.get("www-authenticate") == "Bearer"
        assert token not in json.dumps(body)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Token {token}"},
        {"Authorization": "{token}"},
        {"X-Token": "{token}"},
    ],
    ids=["none", "empty", "bearer without token", "basic", "token scheme", "bare", "other header"],
)
def test_missing_or_non_bearer_authorization_is_401(
    headers: dict[str, str], server: RunningServer
) -> None:
    """Without ``Authorization: Bearer <jwt>`` a user route answers 401 UNAUTHORIZED."""
    good = hs256(claims(user_role="admin"))
    sent = {k: v.format(token=good) for k, v in headers.items()}
    response = httpx.get(server.url + "/admin/flags", headers=sent, timeout=TIMEOUT)
    expect_error(response, 401, "UNAUTHORIZED")
    assert response.headers.get("www-authenticate") == "Bearer"


def test_hs256_token_is_accepted(server: RunningServer) -> None:
    """A token signed with the project's JWT secret, right aud and iss, is let in."""
    token = hs256(claims(sub="hs-user"))
    response = httpx.get(
        server.url + "/games", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert response.json()["games"]


def test_token_expired_within_the_leeway_is_accepted(server: RunningServer) -> None:
    """A token that expired 3 s ago still passes: the clock leeway is 10 s."""
    token = hs256(claims(exp=int(time.time()) - 3))
    response = httpx.get(
        server.url + "/games", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text


def test_lowercase_bearer_scheme_is_accepted(server: RunningServer) -> None:
    """The auth scheme is case-insensitive (RFC 7235): ``bearer <jwt>`` works too."""
    token = hs256(claims())
    response = httpx.get(
        server.url + "/games", headers={"Authorization": f"bearer {token}"}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text


def test_es256_token_is_accepted_through_the_jwks(
    keys: Keys, jwks: JWKSServer, server: RunningServer
) -> None:
    """A token signed with a key the project publishes in its JWKS is let in, role kept."""
    token = sign(keys.published, claims(sub="es-user", user_role="developer"))
    response = httpx.get(
        server.url + "/admin/flags", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert jwks.fetches >= 1


def test_alg_confusion_refused_on_a_jwks_only_server(
    tmp_path: Path, keys: Keys, jwks: JWKSServer
) -> None:
    """With no HS256 secret configured, an HS256 token keyed with the public PEM is 401."""
    settings = make_settings(
        tmp_path, supabase_jwt_secret=None, supabase_url=SUPABASE_URL, supabase_jwks_url=jwks.url
    )
    forged = by_hand(
        {"alg": "HS256", "typ": "JWT", "kid": keys.published.kid},
        claims(user_role="admin"),
        keys.published.public_pem,
    )
    good = sign(keys.published, claims(user_role="admin"))
    with running_server(settings) as srv, httpx.Client(base_url=srv.url, timeout=TIMEOUT) as http:
        expect_error(
            http.get("/admin/flags", headers={"Authorization": f"Bearer {forged}"}),
            401,
            "UNAUTHORIZED",
        )
        ok = http.get("/admin/flags", headers={"Authorization": f"Bearer {good}"})
        assert ok.status_code == 200, ok.text
