"""Access-token verification (CONTRACT §1): HS256 and JWKS keys, refusals, roles."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.warnings import InsecureKeyLengthWarning

from chat_server.auth import Principal, TokenVerifier, is_staff, mint_token
from chat_server.config import Settings
from chat_server.errors import TokenExpired, Unauthorized, Unavailable
from tests.jwks_server import JWKSServer
from tests.jwt_cases import Claims, KeyPair, by_hand, ec_key, rsa_key, sign, tampered

ISSUER = "http://127.0.0.1/auth/v1"
SECRET = secrets.token_urlsafe(32)
TIMEOUT = 5.0
claims = Claims(ISSUER)
# What a tampered payload claims instead: another user, as admin.
ANOTHER_ADMIN = {"sub": "someone-else", "user_role": "admin"}


@dataclass(frozen=True)
class Keys:
    ec: KeyPair
    rsa: KeyPair
    ec_next: KeyPair

    def document(self, *pairs: KeyPair) -> dict[str, Any]:
        return {"keys": [p.jwk for p in pairs]}


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(ec=ec_key("ec-1"), rsa=rsa_key("rsa-1"), ec_next=ec_key("ec-2"))


@pytest.fixture
def jwks(keys: Keys) -> Iterator[JWKSServer]:
    with JWKSServer(keys.document(keys.ec, keys.rsa)) as server:
        yield server


@pytest.fixture
async def make_verifier() -> AsyncIterator[Callable[..., TokenVerifier]]:
    made: list[TokenVerifier] = []

    def make(**kwargs: Any) -> TokenVerifier:
        kwargs.setdefault("hs256_secret", None)
        kwargs.setdefault("jwks_url", None)
        kwargs.setdefault("issuer", ISSUER)
        verifier = TokenVerifier(**kwargs)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        async with asyncio.timeout(TIMEOUT):
            await verifier.aclose()


async def verify(verifier: TokenVerifier, token: str) -> Principal:
    async with asyncio.timeout(TIMEOUT):
        return await verifier.verify(token)


REFUSALS: dict[str, Callable[[Keys], str]] = {
    "expired": lambda k: sign(k.ec, claims(exp=int(time.time()) - 60)),
    "wrong aud": lambda k: sign(k.ec, claims(aud="anon")),
    "no aud": lambda k: sign(k.ec, claims(aud=None)),
    "wrong iss": lambda k: sign(k.ec, claims(iss="https://evil.example/auth/v1")),
    "no iss": lambda k: sign(k.ec, claims(iss=None)),
    "no exp": lambda k: sign(k.ec, claims(exp=None)),
    "alg none": lambda k: by_hand({"alg": "none", "typ": "JWT"}, claims(), None),
    "alg None": lambda k: by_hand({"alg": "None", "kid": k.ec.kid}, claims(), None),
    "HS256 signed with the EC public key": lambda k: by_hand(
        {"alg": "HS256", "kid": k.ec.kid}, claims(), k.ec.public_pem
    ),
    "HS256 signed with the RSA public key": lambda k: by_hand(
        {"alg": "HS256", "kid": k.rsa.kid}, claims(), k.rsa.public_pem
    ),
    "RS256 header on an EC key": lambda k: by_hand(
        {"alg": "RS256", "kid": k.ec.kid}, claims(), k.ec.public_pem
    ),
    "tampered payload ES256": lambda k: tampered(sign(k.ec, claims()), claims(**ANOTHER_ADMIN)),
    "tampered payload RS256": lambda k: tampered(sign(k.rsa, claims()), claims(**ANOTHER_ADMIN)),
    "tampered payload HS256": lambda k: tampered(
        mint_token(secret=SECRET, user_id="u", role=None),
        claims(**ANOTHER_ADMIN),
    ),
    "HS256 with another secret": lambda k: mint_token(
        secret=secrets.token_urlsafe(32), user_id="u", role="admin", issuer=ISSUER
    ),
    "unknown kid": lambda k: sign(k.ec_next, claims()),
    "no kid": lambda k: jwt.encode(claims(), k.ec.private, algorithm="ES256"),
    "ES384": lambda k: jwt.encode(
        claims(), ec.generate_private_key(ec.SECP384R1()), "ES384", {"kid": k.ec.kid}
    ),
    "garbage": lambda k: "not-a-token",
    "garbage with dots": lambda k: "abc.def.ghi",
    "empty": lambda k: "",
    "missing sub": lambda k: sign(k.ec, claims(sub=None)),
    "empty sub": lambda k: sign(k.ec, claims(sub="")),
    "numeric sub": lambda k: sign(k.ec, claims(sub=42)),
}


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refused_tokens(
    case: str, keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """Each bad token is refused with unauthorized (token_expired when expired), token unseen."""
    verifier = make_verifier(hs256_secret=SECRET, jwks_url=jwks.url)
    token = REFUSALS[case](keys)
    with pytest.raises(Unauthorized) as caught:
        await verify(verifier, token)
    assert (caught.type is TokenExpired) is (case == "expired")
    if token:
        assert token not in str(caught.value)
        assert token not in repr(caught.value.context)


@pytest.mark.parametrize("pair_name", ["ec", "rsa"])
async def test_hs256_signed_with_public_key_refused_without_secret(
    pair_name: str, keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """With only a JWKS configured, an HS256 token keyed by a public PEM is unauthorized."""
    pair: KeyPair = getattr(keys, pair_name)
    verifier = make_verifier(jwks_url=jwks.url)
    token = by_hand({"alg": "HS256", "kid": pair.kid}, claims(), pair.public_pem)
    with pytest.raises(Unauthorized) as caught:
        await verify(verifier, token)
    assert caught.type is Unauthorized
    assert jwks.fetches == 0


async def test_asymmetric_token_refused_without_jwks(
    keys: Keys, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """With only an HS256 secret configured, an ES256 token is unauthorized."""
    verifier = make_verifier(hs256_secret=SECRET)
    with pytest.raises(Unauthorized):
        await verify(verifier, sign(keys.ec, claims()))


async def test_hs256_accepted(make_verifier: Callable[..., TokenVerifier]) -> None:
    """A token minted with the configured secret gives its user, role and expiry."""
    verifier = make_verifier(hs256_secret=SECRET)
    before = time.time()
    token = mint_token(secret=SECRET, user_id="user-7", role="developer", ttl=600, issuer=ISSUER)
    principal = await verify(verifier, token)
    assert principal.user_id == "user-7"
    assert principal.role == "developer"
    assert principal.claims_role == "authenticated"
    assert before + 598 <= principal.expires_at <= time.time() + 600


@pytest.mark.parametrize("pair_name", ["ec", "rsa"])
async def test_jwks_token_accepted(
    pair_name: str, keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """ES256 and RS256 tokens verify against the JWKS, fetched once and then cached."""
    pair: KeyPair = getattr(keys, pair_name)
    verifier = make_verifier(hs256_secret=SECRET, jwks_url=jwks.url)
    for _ in range(3):
        principal = await verify(verifier, sign(pair, claims(sub=f"{pair_name}-user")))
        assert principal.user_id == f"{pair_name}-user"
        assert principal.role == "basic"
    assert jwks.fetches == 1


async def test_key_rotation_refetches_once(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """After a rotation, a token with the new kid is accepted after exactly one refetch."""
    verifier = make_verifier(jwks_url=jwks.url, jwks_refresh_interval=0.0)
    await verify(verifier, sign(keys.ec, claims()))
    assert jwks.fetches == 1
    jwks.set_document(keys.document(keys.ec_next))
    new_token = sign(keys.ec_next, claims(sub="rotated"))
    assert (await verify(verifier, new_token)).user_id == "rotated"
    assert jwks.fetches == 2
    assert (await verify(verifier, new_token)).user_id == "rotated"
    assert jwks.fetches == 2


async def test_unknown_kid_refetch_at_most_once_per_interval(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """Twenty concurrent tokens with an unknown kid cause one JWKS fetch per interval."""
    interval = 0.5
    verifier = make_verifier(jwks_url=jwks.url, jwks_refresh_interval=interval)
    await verify(verifier, sign(keys.ec, claims()))
    assert jwks.fetches == 1
    await asyncio.sleep(interval + 0.1)
    jwks.delay = 0.2  # every waiter queues behind the one fetch
    unknown = sign(keys.ec_next, claims())
    async with asyncio.timeout(TIMEOUT):
        results = await asyncio.gather(
            *(verifier.verify(unknown) for _ in range(20)), return_exceptions=True
        )
    assert all(type(r) is Unauthorized for r in results), results
    assert jwks.fetches == 2
    jwks.delay = 0.0
    with pytest.raises(Unauthorized):
        await verify(verifier, unknown)
    assert jwks.fetches == 2
    # Known keys keep working without any fetch meanwhile.
    await verify(verifier, sign(keys.rsa, claims()))
    assert jwks.fetches == 2


async def test_cold_concurrent_verifications_share_one_fetch(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """Twenty first tokens arriving together trigger a single JWKS fetch."""
    verifier = make_verifier(jwks_url=jwks.url)
    jwks.delay = 0.2
    async with asyncio.timeout(TIMEOUT):
        principals = await asyncio.gather(
            *(verifier.verify(sign(keys.ec, claims(sub=f"u{i}"))) for i in range(20))
        )
    assert sorted(p.user_id for p in principals) == sorted(f"u{i}" for i in range(20))
    assert jwks.fetches == 1


async def test_jwks_unreachable_without_cache_is_unavailable(
    keys: Keys, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """When the JWKS cannot be fetched and nothing is cached, the answer is unavailable."""
    with JWKSServer() as closed:
        url = closed.url
    verifier = make_verifier(jwks_url=url, jwks_timeout=1.0)
    with pytest.raises(Unavailable):
        await verify(verifier, sign(keys.ec, claims()))
    with pytest.raises(Unavailable):
        await verify(verifier, sign(keys.ec, claims()))


async def test_jwks_error_status_without_cache_is_unavailable(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """A JWKS endpoint answering 503 is reported as unavailable, then recovers."""
    verifier = make_verifier(jwks_url=jwks.url, jwks_refresh_interval=0.0)
    jwks.status = 503
    with pytest.raises(Unavailable):
        await verify(verifier, sign(keys.ec, claims()))
    jwks.status = 200
    assert (await verify(verifier, sign(keys.ec, claims(sub="back")))).user_id == "back"


async def test_jwks_down_with_cache(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """With cached keys and the JWKS down, known kids pass and unknown kids are unauthorized."""
    verifier = make_verifier(jwks_url=jwks.url, jwks_refresh_interval=0.0)
    await verify(verifier, sign(keys.ec, claims()))
    jwks.status = 503
    with pytest.raises(Unauthorized) as caught:
        await verify(verifier, sign(keys.ec_next, claims()))
    assert caught.type is Unauthorized
    assert (await verify(verifier, sign(keys.rsa, claims(sub="still")))).user_id == "still"


async def test_revoked_key_refused_after_max_age(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """A key removed from the JWKS stops being accepted once the cache ages out."""
    verifier = make_verifier(jwks_url=jwks.url, jwks_refresh_interval=0.0, jwks_max_age=0.3)
    token = sign(keys.rsa, claims())
    await verify(verifier, token)
    jwks.set_document(keys.document(keys.ec))
    await verify(verifier, token)  # still cached
    await asyncio.sleep(0.4)
    with pytest.raises(Unauthorized):
        await verify(verifier, token)
    assert jwks.fetches == 2


async def test_user_metadata_role_ignored(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """A user who writes role=admin into their own metadata stays basic."""
    verifier = make_verifier(jwks_url=jwks.url)
    token = sign(keys.ec, claims(user_metadata={"role": "admin", "user_role": "admin"}))
    principal = await verify(verifier, token)
    assert principal.role == "basic"
    assert not is_staff(principal.role)


async def test_user_role_claim_wins(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """The user_role claim beats app_metadata and the profiles row."""
    lookups: list[str] = []

    async def lookup(user_id: str) -> str | None:
        lookups.append(user_id)
        return "basic"

    verifier = make_verifier(jwks_url=jwks.url, role_lookup=lookup)
    token = sign(keys.ec, claims(user_role="admin", app_metadata={"role": "developer"}))
    assert (await verify(verifier, token)).role == "admin"
    assert lookups == []


async def test_app_metadata_role_used(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """Without user_role, app_metadata.role gives the role."""
    verifier = make_verifier(jwks_url=jwks.url)
    token = sign(keys.rsa, claims(app_metadata={"provider": "email", "role": "developer"}))
    assert (await verify(verifier, token)).role == "developer"


async def test_role_lookup_used_and_cached(
    make_verifier: Callable[..., TokenVerifier],
) -> None:
    """Without a role claim the profiles row decides, looked up once per cache period."""
    lookups: list[str] = []
    roles = {"user-a": "tester", "user-b": None}

    async def lookup(user_id: str) -> str | None:
        lookups.append(user_id)
        return roles[user_id]

    verifier = make_verifier(hs256_secret=SECRET, role_lookup=lookup, role_cache_ttl=0.3)
    token_a = mint_token(secret=SECRET, user_id="user-a", role=None, issuer=ISSUER)
    token_b = mint_token(secret=SECRET, user_id="user-b", role=None, issuer=ISSUER)
    assert (await verify(verifier, token_a)).role == "tester"
    assert (await verify(verifier, token_a)).role == "tester"
    assert (await verify(verifier, token_b)).role == "basic"
    assert (await verify(verifier, token_b)).role == "basic"
    assert lookups == ["user-a", "user-b"]
    roles["user-a"] = "admin"
    await asyncio.sleep(0.4)
    assert (await verify(verifier, token_a)).role == "admin"
    assert lookups == ["user-a", "user-b", "user-a"]


async def test_role_defaults_to_basic(make_verifier: Callable[..., TokenVerifier]) -> None:
    """With no claim and no profiles lookup the role is basic."""
    verifier = make_verifier(hs256_secret=SECRET)
    token = mint_token(secret=SECRET, user_id="u", role=None, issuer=ISSUER)
    assert (await verify(verifier, token)).role == "basic"


@pytest.mark.parametrize(("expired_ago", "accepted"), [(5, True), (15, False)])
async def test_leeway(
    expired_ago: int, accepted: bool, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """A token expired 5 s ago passes the 10 s clock leeway; one expired 15 s ago does not."""
    verifier = make_verifier(hs256_secret=SECRET, leeway=10.0)
    token = mint_token(secret=SECRET, user_id="u", role=None, ttl=-expired_ago, issuer=ISSUER)
    if accepted:
        assert (await verify(verifier, token)).user_id == "u"
    else:
        with pytest.raises(TokenExpired):
            await verify(verifier, token)


async def test_from_settings(
    keys: Keys, jwks: JWKSServer, make_verifier: Callable[..., TokenVerifier]
) -> None:
    """SUPABASE_URL gives the JWKS address and the issuer that tokens must carry."""
    base = jwks.url.split("/auth/v1/")[0]
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        supabase_url=base,
        supabase_jwks_url=None,
        supabase_jwt_secret=SECRET,
        jwt_leeway=10.0,
    )
    verifier = TokenVerifier.from_settings(settings)
    try:
        issuer = f"{base}/auth/v1"
        principal = await verify(verifier, sign(keys.ec, claims(iss=issuer, user_role="admin")))
        assert principal.role == "admin"
        assert jwks.fetches == 1
        hs = mint_token(secret=SECRET, user_id="u", role="basic", issuer=issuer)
        assert (await verify(verifier, hs)).user_id == "u"
        with pytest.raises(Unauthorized):
            await verify(verifier, sign(keys.ec, claims()))  # the test issuer, not this one
    finally:
        async with asyncio.timeout(TIMEOUT):
            await verifier.aclose()


async def test_short_secret_warns_once(
    make_verifier: Callable[..., TokenVerifier], caplog: pytest.LogCaptureFixture
) -> None:
    """A short legacy secret still works; the operator is warned once, not per token."""
    short = "too-short-secret"
    with caplog.at_level(logging.WARNING, logger="chat_server.auth"):
        verifier = make_verifier(hs256_secret=short)
    assert any("shorter than" in r.getMessage() for r in caplog.records)
    with pytest.warns(InsecureKeyLengthWarning):
        token = mint_token(secret=short, user_id="u", role="basic", issuer=ISSUER)
    for _ in range(2):
        assert (await verify(verifier, token)).user_id == "u"


def test_needs_a_key() -> None:
    """A verifier with neither secret nor JWKS is a configuration error, not an open door."""
    with pytest.raises(ValueError):
        TokenVerifier(hs256_secret=None, jwks_url=None, issuer=None)


def test_mint_token_shape() -> None:
    """Minted tokens look like Supabase's: aud, role, app_metadata and user_role."""
    token = mint_token(secret=SECRET, user_id="u1", role="admin", ttl=60, email="a@b.c")
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience="authenticated")
    assert payload["sub"] == "u1"
    assert payload["role"] == "authenticated"
    assert payload["app_metadata"] == {"role": "admin"}
    assert payload["user_role"] == "admin"
    assert payload["email"] == "a@b.c"
    assert payload["exp"] - payload["iat"] == 60
    assert "iss" not in payload


def test_is_staff() -> None:
    """Admins and developers are staff; everyone else is not."""
    assert is_staff("admin") and is_staff("developer")
    assert not any(is_staff(r) for r in ("basic", "Admin", "tester", ""))
