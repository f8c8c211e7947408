"""Signing keys, JWKS documents and tokens for the JWT tests, minted with cryptography and
PyJWT (nothing is read from disk)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.example.com/"
NOW = 1_800_000_000.0


@dataclass(frozen=True)
class SigningKey:
    """A private key, its kid and its default algorithm."""

    kid: str | None
    private: Any
    alg: str

    def jwk(self, **extra: Any) -> dict[str, Any]:
        """The public JWK (with ``kid`` when the key has one)."""
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = json.loads(RSAAlgorithm.to_jwk(public))
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = json.loads(ECAlgorithm.to_jwk(public))
        else:
            data = json.loads(OKPAlgorithm.to_jwk(public))
        if self.kid is not None:
            data["kid"] = self.kid
        data.update(extra)
        return dict(data)

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def sign(
        self, claims: dict[str, Any], *, alg: str | None = None, **headers: Any
    ) -> str:
        """A compact JWS of ``claims`` signed with this key (``kid`` in the header)."""
        header = dict(headers)
        if self.kid is not None:
            header.setdefault("kid", self.kid)
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=header)



def rsa_key(kid: str | None = "rsa-1", bits: int = 2048, alg: str = "RS256") -> SigningKey:
    return SigningKey(kid, rsa.generate_private_key(public_exponent=65537, key_size=bits), alg)


def ec_key(kid: str | None = "ec-1", curve: ec.EllipticCurve | None = None,
           alg: str = "ES256") -> SigningKey:
    return SigningKey(kid, ec.generate_private_key(curve or ec.SECP256R1()), alg)


def ed_key(kid: str | None = "ed-1") -> SigningKey:
    return SigningKey(kid, ed25519.Ed25519PrivateKey.generate(), "EdDSA")


def jwks(*keys: SigningKey | dict[str, Any]) -> bytes:
    """A JWKS document of the keys' public JWKs (dicts are taken as they are)."""
    return json.dumps(
        {"keys": [k if isinstance(k, dict) else k.jwk() for k in keys]}
    ).encode()


def claims(**changes: Any) -> dict[str, Any]:
    """A valid payload at :data:`NOW`; ``name=None`` removes a claim."""
    payload: dict[str, Any] = {
        "iss": ISSUER, "sub": "alice", "aud": "eventgw", "exp": NOW + 600,
        "iat": NOW - 10, "nbf": NOW - 10,
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A compact token built by hand (for headers PyJWT would not write)."""
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )
