"""Verify Supabase Auth access tokens locally and resolve the caller's app role.

Supabase signs access tokens with a shared HS256 secret (legacy projects) or with
asymmetric keys (ES256/RS256) published as a JWKS. ``TokenVerifier`` accepts either,
chosen by the token's ``alg`` and what is configured, and never lets one family's key
verify the other's signature (algorithm confusion): the key is picked by the alg
family first, then pyjwt verifies with exactly that one algorithm.

The JWKS is fetched with httpx (never blocking the event loop), cached, and refetched
when a token names an unknown ``kid`` or the cache is older than ``jwks_max_age`` —
at most once every ``jwks_refresh_interval`` seconds, one fetch shared by every
waiting verification.

The app role is the ``user_role`` claim, else ``app_metadata.role`` (both set only by
the server side: a custom access token hook or the admin API), else the ``profiles``
row through ``role_lookup``, else ``basic``. ``user_metadata`` is writable by the user
and is never read.

Error messages name the reason, never the token.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import httpx
import jwt
from jwt.warnings import InsecureKeyLengthWarning

from chat_server.errors import TokenExpired, Unauthorized, Unavailable

if TYPE_CHECKING:
    from chat_server.config import Settings

__all__ = [
    "DEFAULT_ROLE",
    "STAFF_ROLES",
    "Principal",
    "RoleLookup",
    "TokenVerifier",
    "is_staff",
    "mint_token",
]

log = logging.getLogger(__name__)

DEFAULT_ROLE = "basic"
STAFF_ROLES = frozenset({"admin", "developer"})
MAX_SUB_CHARS = 64  # the width of every user id column
AUDIENCE = "authenticated"

RoleLookup = Callable[[str], Awaitable[str | None]]

_HS_ALGS = frozenset({"HS256"})
_ASYMMETRIC_ALGS = frozenset({"ES256", "RS256"})
_MAX_TOKEN_CHARS = 16 * 1024
_MIN_HS_SECRET_BYTES = 32
_ROLE_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject and the app role resolved for them."""

    user_id: str
    role: str
    expires_at: float
    claims_role: str | None
    role_in_token: bool = False  # the role came from the token, not the profiles row


def _token_role(claims: dict[str, Any]) -> str | None:
    """The app role the token carries (``user_role``, else ``app_metadata.role``)."""
    role = claims.get("user_role")
    if isinstance(role, str) and role:
        return role
    app_metadata = claims.get("app_metadata")
    if isinstance(app_metadata, dict):
        role = app_metadata.get("role")
        if isinstance(role, str) and role:
            return role
    return None


def is_staff(role: str) -> bool:
    """Staff may use ``/admin/*`` (CONTRACT §1)."""
    return role in STAFF_ROLES


class TokenVerifier:
    """Checks access tokens and turns them into ``Principal`` values.

    Made once (in the app's lifespan) and shared: ``verify()`` is safe to call
    concurrently and to cancel; a cancelled JWKS fetch is simply retried by the next
    verification that needs it. ``aclose()`` closes the HTTP client if this object
    made it (a client passed in stays the caller's).
    """

    def __init__(
        self,
        *,
        hs256_secret: str | None,
        jwks_url: str | None,
        issuer: str | None,
        audience: str = AUDIENCE,
        leeway: float = 10.0,
        http: httpx.AsyncClient | None = None,
        jwks_refresh_interval: float = 30.0,
        role_lookup: RoleLookup | None = None,
        role_cache_ttl: float = 30.0,
        jwks_timeout: float = 5.0,
        jwks_max_age: float = 600.0,
    ) -> None:
        if not hs256_secret and not jwks_url:
            raise ValueError("configure an HS256 secret or a JWKS URL to verify tokens")
        self._short_secret = (
            bool(hs256_secret) and len((hs256_secret or "").encode()) < _MIN_HS_SECRET_BYTES
        )
        if self._short_secret:
            log.warning(
                "the JWT secret is shorter than %d bytes; use a longer one",
                _MIN_HS_SECRET_BYTES,
            )
        self._hs_secret = hs256_secret or None
        self._jwks_url = jwks_url or None
        self._issuer = issuer or None
        self._audience = audience
        self._leeway = leeway
        self._http = http
        self._owns_http = http is None
        self._refresh_interval = jwks_refresh_interval
        self._jwks_timeout = jwks_timeout
        self._jwks_max_age = jwks_max_age
        self._role_lookup = role_lookup
        self._role_cache_ttl = role_cache_ttl

        self._keys: dict[str, jwt.PyJWK] | None = None  # None: never fetched
        self._keys_fetched_at = 0.0  # monotonic
        self._last_fetch_attempt: float | None = None  # monotonic
        self._jwks_lock = asyncio.Lock()
        self._roles: OrderedDict[str, tuple[str | None, float]] = OrderedDict()

    @classmethod
    def from_settings(
        cls, settings: Settings, role_lookup: RoleLookup | None = None
    ) -> TokenVerifier:
        """Build from configuration (``SUPABASE_JWT_SECRET``, ``SUPABASE_URL``, ...)."""
        return cls(
            hs256_secret=settings.supabase_jwt_secret,
            jwks_url=settings.jwks_url,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
            role_lookup=role_lookup,
            role_cache_ttl=settings.role_cache_ttl,
        )

    async def aclose(self) -> None:
        """Close the HTTP client this verifier made, if any."""
        if self._owns_http and self._http is not None:
            client, self._http = self._http, None
            await client.aclose()

    async def verify(self, token: str) -> Principal:
        """Check ``token`` and resolve its role.

        Raises ``TokenExpired`` for an expired token, ``Unauthorized`` for any other
        refusal, and ``Unavailable`` when the JWKS cannot be fetched and no cached key
        can decide. Exceptions from ``role_lookup`` propagate (and are not cached).
        """
        claims = await self.verify_claims(token)
        user_id: str = claims["sub"]
        claims_role = claims.get("role")
        in_token = _token_role(claims)
        return Principal(
            user_id=user_id,
            role=in_token or await self._profile_role(user_id),
            expires_at=float(claims["exp"]),
            claims_role=claims_role if isinstance(claims_role, str) else None,
            role_in_token=in_token is not None,
        )

    async def refresh_role(self, principal: Principal) -> Principal:
        """``principal`` with its ``profiles`` role looked up again (through the cache,
        ``ROLE_CACHE_TTL``), for an open socket starting or resuming a session. A role
        the token carries stays: it changes with the next token."""
        if principal.role_in_token:
            return principal
        role = await self._profile_role(principal.user_id)
        return principal if role == principal.role else replace(principal, role=role)

    async def verify_claims(self, token: str) -> dict[str, Any]:
        """Check signature, ``aud``, ``exp``, ``iss`` and ``sub``; return the claims."""
        if not isinstance(token, str) or not token.strip():
            raise Unauthorized("missing token")
        token = token.strip()
        if len(token) > _MAX_TOKEN_CHARS:
            raise Unauthorized("token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthorized("token is malformed") from exc
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise Unauthorized("token algorithm not accepted")
        key: str | jwt.PyJWK
        if alg in _HS_ALGS and self._hs_secret:
            key = self._hs_secret
        elif alg in _ASYMMETRIC_ALGS and self._jwks_url:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid:
                raise Unauthorized("token names no signing key")
            key = await self._key_for(kid)
            if key.algorithm_name != alg:
                raise Unauthorized("token algorithm does not match its signing key")
        else:
            raise Unauthorized("token algorithm not accepted")
        return self._decode(token, key, alg)

    def _decode(self, token: str, key: str | jwt.PyJWK, alg: str) -> dict[str, Any]:
        required = ["exp", "sub", "aud"]
        if self._issuer:
            required.append("iss")
        try:
            if key is self._hs_secret and self._short_secret:
                # Reported once, at construction, rather than warned about per token.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                    claims = self._pyjwt_decode(token, key, alg, required)
            else:
                claims = self._pyjwt_decode(token, key, alg, required)
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired() from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("token audience not accepted") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("token issuer not accepted") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token has no {exc.claim!r} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("token signature is invalid") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise Unauthorized("token is invalid") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("token has no subject")
        if len(sub) > MAX_SUB_CHARS:
            raise Unauthorized(f"token subject is longer than {MAX_SUB_CHARS} characters")
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise Unauthorized("token expiry is not a number")
        return claims

    def _pyjwt_decode(
        self, token: str, key: str | jwt.PyJWK, alg: str, required: list[str]
    ) -> dict[str, Any]:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],  # exactly one: the family was chosen with the key
            audience=self._audience,
            issuer=self._issuer,
            leeway=self._leeway,
            options={"require": required},
        )
        return claims

    # --- JWKS --------------------------------------------------------------------

    async def _key_for(self, kid: str) -> jwt.PyJWK:
        """The cached key named ``kid``, refetching the JWKS when allowed and useful."""
        keys = self._keys
        if keys is not None and kid in keys and not self._stale():
            return keys[kid]
        async with self._jwks_lock:
            # Another verification may have refreshed the keys while we waited.
            keys = self._keys
            stale = self._stale()
            if keys is not None and kid in keys and not stale:
                return keys[kid]
            now = time.monotonic()
            last = self._last_fetch_attempt
            if last is None or now - last >= self._refresh_interval:
                try:
                    keys = await self._fetch_jwks()
                except Unavailable:
                    self._last_fetch_attempt = time.monotonic()
                    if self._keys is None:
                        raise
                    keys = self._keys  # keep serving what we had
                else:
                    self._last_fetch_attempt = time.monotonic()
                    self._keys = keys
                    self._keys_fetched_at = self._last_fetch_attempt
            elif keys is None:
                raise Unavailable("the signing keys could not be fetched")
        if kid in keys:
            return keys[kid]
        raise Unauthorized("token signed with an unknown key")

    def _stale(self) -> bool:
        return time.monotonic() - self._keys_fetched_at >= self._jwks_max_age

    async def _fetch_jwks(self) -> dict[str, jwt.PyJWK]:
        """GET the JWKS; usable keys by ``kid``. Raises ``Unavailable`` on any failure."""
        assert self._jwks_url is not None
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self._jwks_timeout)
        try:
            async with asyncio.timeout(self._jwks_timeout):
                response = await self._http.get(
                    self._jwks_url,
                    timeout=self._jwks_timeout,
                    headers={"Accept": "application/json"},
                )
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, TimeoutError, ValueError) as exc:
            log.warning("fetching the JWKS failed: %s", type(exc).__name__)
            raise Unavailable("the signing keys could not be fetched") from exc
        raw_keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(raw_keys, list):
            log.warning("the JWKS document has no 'keys' list")
            raise Unavailable("the signing keys could not be fetched")
        keys: dict[str, jwt.PyJWK] = {}
        for raw in raw_keys:
            if not isinstance(raw, dict) or not isinstance(raw.get("kid"), str):
                continue
            if raw.get("use") not in (None, "sig"):
                continue
            try:
                key = jwt.PyJWK(raw)
            except jwt.PyJWTError:
                continue
            if key.algorithm_name in _ASYMMETRIC_ALGS:
                keys[raw["kid"]] = key
        log.info("fetched the JWKS: %d usable signing keys", len(keys))
        return keys

    # --- Roles -------------------------------------------------------------------

    async def _profile_role(self, user_id: str) -> str:
        """The ``profiles`` role, else the default."""
        if self._role_lookup is not None:
            role = await self._lookup_role(user_id, self._role_lookup)
            if role:
                return role
        return DEFAULT_ROLE

    async def _lookup_role(self, user_id: str, lookup: RoleLookup) -> str | None:
        """The ``profiles`` role, cached per user (misses too) for ``role_cache_ttl``."""
        now = time.monotonic()
        cached = self._roles.get(user_id)
        if cached is not None and cached[1] > now:
            self._roles.move_to_end(user_id)
            return cached[0]
        role = await lookup(user_id)
        self._roles[user_id] = (role, time.monotonic() + self._role_cache_ttl)
        self._roles.move_to_end(user_id)
        while len(self._roles) > _ROLE_CACHE_SIZE:
            self._roles.popitem(last=False)
        return role


def mint_token(
    *,
    secret: str,
    user_id: str,
    role: str | None,
    ttl: int = 3600,
    issuer: str | None = None,
    email: str | None = None,
) -> str:
    """An HS256 access token shaped like Supabase's, for ``chat-server token`` and tests.

    ``role`` goes in ``user_role`` and ``app_metadata.role`` (as a custom access
    token hook would put it); a negative ``ttl`` makes an already expired token.
    """
    if not secret:
        raise ValueError("a signing secret is required")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "aud": AUDIENCE,
        "role": "authenticated",
        "iat": now,
        "exp": now + ttl,
        "app_metadata": {"role": role} if role else {},
        "user_metadata": {},
        "is_anonymous": False,
    }
    if role:
        claims["user_role"] = role
    if issuer:
        claims["iss"] = issuer
    if email:
        claims["email"] = email
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})
