"""Token builders for the JWT tests: keys, Supabase-shaped claims, signed, hand-made and
tampered tokens.

Shared by the verifier's tests (tests/test_auth.py), the REST matrix
(tests/http_api/test_auth_rest.py) and the WebSocket matrix
(tests/faults/test_jwt_matrix_ws.py), so that a case means the same token everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.server import SECRET

__all__ = [
    "ADMIN",
    "Claims",
    "KeyPair",
    "by_hand",
    "ec_key",
    "hs256",
    "rsa_key",
    "sign",
    "tampered",
]

# Claims that would make the bearer an admin if the token were trusted.
ADMIN: dict[str, Any] = {"user_role": "admin", "app_metadata": {"role": "admin"}}


@dataclass(frozen=True)
class KeyPair:
    """An asymmetric signing key with its public PEM and its JWKS entry."""

    kid: str
    alg: str
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    public_pem: bytes
    jwk: dict[str, Any]


def ec_key(kid: str) -> KeyPair:
    """A fresh P-256 key for ES256."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return KeyPair(
        kid, "ES256", private, _pem(private), {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}
    )


def rsa_key(kid: str) -> KeyPair:
    """A fresh 2048-bit key for RS256."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return KeyPair(
        kid, "RS256", private, _pem(private), {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}
    )


def _pem(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@dataclass(frozen=True)
class Claims:
    """Supabase-shaped claims for one project (``issuer``) and user, valid for an hour:
    ``claims(**overrides)``; a None override drops the claim."""

    issuer: str
    sub: str = "user-1"

    def __call__(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "sub": self.sub,
            "aud": "authenticated",
            "role": "authenticated",
            "iss": self.issuer,
            "iat": now,
            "exp": now + 3600,
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    """Signed with the test server's JWT secret unless told otherwise."""
    return jwt.encode(payload, secret, algorithm="HS256")


def sign(pair: KeyPair, payload: dict[str, Any], kid: str | None = None) -> str:
    """Signed with ``pair`` under its own algorithm; ``kid`` claims another key's id."""
    return jwt.encode(payload, pair.private, algorithm=pair.alg, headers={"kid": kid or pair.kid})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def by_hand(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None) -> str:
    """A token pyjwt refuses to make: ``alg: none`` (no key, empty signature), or an
    HMAC-SHA256 signature keyed with a public key's PEM (algorithm confusion)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = b""
    if hmac_key is not None:
        signature = hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def tampered(token: str, payload: dict[str, Any]) -> str:
    """The header and signature of a real ``token`` over another ``payload``."""
    header, _, signature = token.split(".")
    return f"{header}.{_b64(json.dumps(payload).encode())}.{signature}"
