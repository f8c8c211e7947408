"""What one JWT check costs the access guard: a cached token vs a fresh RS256 / ES256 one.

``.venv/bin/python profiling/jwt_cost.py`` prints, per call, the best of several runs:
a cache hit (a SHA-256 of the token and a dictionary look-up), and a cache miss
(parsing, the signature check, the claims) for RS256 (2048-bit) and ES256 (P-256)
tokens.  A miss is measured with the cache emptied before each call.
"""

from __future__ import annotations

import json
import timeit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from eventgw.auth.jwt import JwtAuthenticator, JwtProvider, parse_jwks

NOW = 1_800_000_000.0
RUNS = 5
CALLS = 2_000

rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_private = ec.generate_private_key(ec.SECP256R1())
keys = [json.loads(RSAAlgorithm.to_jwk(rsa_private.public_key())),
        json.loads(ECAlgorithm.to_jwk(ec_private.public_key()))]
keys[0]["kid"], keys[1]["kid"] = "rsa", "ec"
auth = JwtAuthenticator([JwtProvider("corp", "https://idp/", audiences=frozenset({"gw"}),
                                     forward_claims=(("sub", "x-client-id"),))])
auth.set_keys("corp", parse_jwks(json.dumps({"keys": keys}).encode()))
payload = {"iss": "https://idp/", "sub": "alice", "aud": "gw", "exp": NOW + 3600,
           "iat": NOW, "email": "alice@example.com", "scope": "events:write api:read"}
tokens = {
    "RS256": jwt.encode(payload, rsa_private, algorithm="RS256", headers={"kid": "rsa"}),
    "ES256": jwt.encode(payload, ec_private, algorithm="ES256", headers={"kid": "ec"}),
}


def best(call: object) -> float:
    """Seconds per call, the best of RUNS runs of CALLS calls."""
    return min(timeit.repeat(call, number=CALLS, repeat=RUNS)) / CALLS  # type: ignore[arg-type]


for alg, token in tokens.items():
    auth.verify(token, NOW)
    hit = best(lambda token=token: auth.verify(token, NOW))

    def miss(token: str = token) -> None:
        auth._cache.clear()  # measuring the uncached path on purpose
        auth.verify(token, NOW)

    cold = best(miss)
    print(f"{alg}: cached {hit * 1e6:6.2f} us   uncached {cold * 1e6:7.2f} us "
          f"({len(token)} characters)")
