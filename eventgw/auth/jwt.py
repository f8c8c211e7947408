# -*- test-case-name: tests.test_jwt -*-
"""JWT bearer tokens: JWKS key sets, the checks a token must pass, and a cache of the
tokens that passed.

Core module: imports PyJWT (with ``cryptography``) and the standard library; it reads no
clock (``now`` is an argument) and no file or socket (a JWKS document comes in as bytes).

The signature is checked by PyJWT's JWS layer (:class:`jwt.PyJWS`); the claims are
checked here against the ``now`` the caller passes, since PyJWT's own claim checks read
the system clock.  The rules, in the order a token meets them:

1. At most :data:`MAX_TOKEN_LENGTH` characters, three base64url parts, a JSON object as
   header and as payload, and no ``crit`` header (no extension is understood, RFC 7515
   section 4.1.11); else ``malformed token``.
2. The provider is the one whose ``issuer`` equals the payload's ``iss`` (read before
   the signature is checked, only to choose); none: ``wrong issuer``.
3. The header's ``alg`` must be one of that provider's ``algorithms`` (never ``none``,
   never HMAC: the configuration accepts asymmetric algorithms only), checked before any
   key is looked at; else ``algorithm not allowed``.
4. The key comes only from the provider's JWKS, by the header's ``kid``; the ``jwk``,
   ``jku``, ``x5u`` and ``x5c`` header parameters are ignored.  A token without ``kid``
   uses the set's key only when the set holds exactly one.  No key: ``unknown key``
   (the shell then refreshes an https:// JWKS early).  A provider whose keys were never
   fetched gives :class:`Unavailable`.  The key must fit the ``alg`` (RSA for RS*/PS*,
   the curve of ES256/384/512, an Edwards curve for EdDSA, and the JWK's own ``alg`` when
   it names one); else ``algorithm not allowed``.
5. The signature: ``bad signature``.
6. The claims, with ``clock_skew`` seconds of leeway: ``exp`` is required
   (``expired`` once ``now >= exp + clock_skew``); ``nbf`` and ``iat`` in the future are
   ``not yet valid``; with ``audiences`` configured, ``aud`` must name one of them
   (``wrong audience``); ``sub`` is required, a string: it is the identity
   (``jwt:NAME:SUB``).  A claim of the wrong type is ``malformed token``.

Key sets (:func:`parse_jwks`): one key per ``kid`` (a kid listed twice is dropped, both
times, as ambiguous); ``oct`` (symmetric) keys, keys for encryption (``use`` other than
``sig``, ``key_ops`` without ``verify``), keys holding private material, RSA keys under
2048 bits and curves no allowed algorithm uses are skipped, each with a reason that
names the key by position and kid, never its material.  A key without ``kid`` is kept
only in a set of one key.  A document with no usable key is refused whole.

Cache (:class:`JwtAuthenticator`): a verified token is remembered by the SHA-256 digest of
its text, at most :data:`CACHE_SIZE` entries, least recently used first out, each until
``min(exp + clock_skew, now + CACHE_TTL)``; a provider's entries go when its keys change.
A hit skips the signature check.  Refusals are not cached: the checks that refuse
cheaply come first, and a bad signature costs one verification, like a fresh token.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWS
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from jwt.exceptions import InvalidAlgorithmError, InvalidSignatureError, PyJWTError

from eventgw.config.runtime import JwtProviderConfig

__all__ = [
    "CACHE_SIZE",
    "CACHE_TTL",
    "MAX_TOKEN_LENGTH",
    "InvalidJwks",
    "JwtAuthenticator",
    "JwtProvider",
    "KeySet",
    "Reason",
    "Rejected",
    "Unavailable",
    "VerificationKey",
    "Verified",
    "parse_jwks",
]

#: Verified tokens remembered at most (an entry is a digest and a few short strings).
CACHE_SIZE: Final = 10_000
#: Seconds a verified token is remembered at most, however late its ``exp``.
CACHE_TTL: Final = 300.0
#: Characters of a token at most: far above what identity providers issue (1-2 KiB),
#: and it bounds the base64 and JSON work done before the signature is checked.
MAX_TOKEN_LENGTH: Final = 16 * 1024
#: RSA keys shorter than this are skipped (RFC 7518 section 3.3 asks for 2048 bits).
MIN_RSA_BITS: Final = 2048

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_OKP_CURVES: Final = frozenset({"Ed25519", "Ed448"})
# JWK members that only a private key has (RFC 7518 sections 6.2.2, 6.3.2; RFC 8037).
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


class Reason(enum.StrEnum):
    """Why a token was refused: the text a 401 names."""

    EXPIRED = "expired"
    NOT_YET_VALID = "not yet valid"
    BAD_SIGNATURE = "bad signature"
    UNKNOWN_KEY = "unknown key"
    WRONG_ISSUER = "wrong issuer"
    WRONG_AUDIENCE = "wrong audience"
    ALGORITHM_NOT_ALLOWED = "algorithm not allowed"
    MALFORMED_TOKEN = "malformed token"


@dataclass(frozen=True, slots=True)
class Verified:
    """A token that passed: who it names, and what goes upstream.

    :ivar provider: the provider's name.
    :ivar subject: the ``sub`` claim.
    :ivar headers: (lower-case header name, value) for each configured claim present.
    :ivar exp: the ``exp`` claim.
    :ivar forward: whether the Authorization header is kept toward the upstream.
    """

    provider: str
    subject: str
    headers: tuple[tuple[str, str], ...]
    exp: float
    forward: bool = False

    @property
    def identity(self) -> str:
        """``jwt:NAME:SUB``, the ``x-eventgw-client`` value."""
        return f"jwt:{self.provider}:{self.subject}"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A token that did not pass; ``provider`` is set once the issuer was recognised."""

    reason: Reason
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The provider's keys have never been fetched: the token cannot be judged (503)."""

    provider: str


Result: TypeAlias = Verified | Rejected | Unavailable


class InvalidJwks(ValueError):
    """A JWKS document that gives no usable key; the message names no key material."""


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One public key of a JWKS and the algorithms it may verify."""

    kid: str | None
    algorithms: frozenset[str]
    key: PublicKey

    def __repr__(self) -> str:
        return f"<VerificationKey kid={self.kid!r} {sorted(self.algorithms)}>"


@dataclass(frozen=True, slots=True)
class KeySet:
    """The usable keys of one JWKS document.

    :ivar keys: by ``kid``.
    :ivar only: the key a token without ``kid`` uses: the set's key when it has one.
    :ivar fingerprint: SHA-256 over the usable keys, to tell a changed set from the same.
    :ivar skipped: why each unusable key was left out (position and kid only).
    """

    keys: Mapping[str, VerificationKey]
    only: VerificationKey | None
    fingerprint: bytes
    skipped: tuple[str, ...] = ()

    def find(self, kid: str | None) -> VerificationKey | None:
        if kid is None:
            return self.only
        return self.keys.get(kid)

    def __len__(self) -> int:
        return len(self.keys) + (1 if self.only is not None and self.only.kid is None else 0)


def _key_algorithms(jwk: Mapping[str, Any]) -> tuple[frozenset[str], PublicKey]:
    """The algorithms a JWK may verify and its public key; ValueError saying why not."""
    kty = jwk.get("kty")
    if kty == "oct":
        raise ValueError("a symmetric (oct) key is never used")
    if _PRIVATE_MEMBERS & set(jwk):
        raise ValueError("it holds private key material")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError(f"its use is {use!r}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("its key_ops do not include 'verify'")
    key: Any
    try:
        if kty == "RSA":
            key = RSAAlgorithm.from_jwk(dict(jwk))
            if not isinstance(key, rsa.RSAPublicKey):
                raise ValueError("not an RSA public key")
            if key.key_size < MIN_RSA_BITS:
                raise ValueError(f"an RSA key of {key.key_size} bits is too short")
            algorithms = _RSA_ALGORITHMS
        elif kty == "EC":
            curve = jwk.get("crv")
            if curve not in _EC_ALGORITHMS:
                raise ValueError(f"curve {curve!r} is not one of P-256, P-384, P-521")
            key = ECAlgorithm.from_jwk(dict(jwk))
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError("not an EC public key")
            algorithms = frozenset({_EC_ALGORITHMS[curve]})
        elif kty == "OKP":
            if jwk.get("crv") not in _OKP_CURVES:
                raise ValueError(f"curve {jwk.get('crv')!r} is not Ed25519 or Ed448")
            key = OKPAlgorithm.from_jwk(dict(jwk))
            if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                raise ValueError("not an Edwards-curve public key")
            algorithms = frozenset({"EdDSA"})
        else:
            raise ValueError(f"key type {kty!r} is not RSA, EC or OKP")
    except PyJWTError:
        raise ValueError(f"not a valid {kty} key") from None
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in algorithms:
            raise ValueError(f"its alg {alg!r} does not fit a {kty} key")
        algorithms = frozenset({alg})
    return algorithms, key


def parse_jwks(data: bytes) -> KeySet:
    """The usable keys of a JWKS document (RFC 7517 section 5).

    :raises InvalidJwks: not JSON, not ``{"keys": [...]}``, or no usable key.
    """
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        raise InvalidJwks("not a JSON document") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise InvalidJwks('not a JWKS: expected {"keys": [...]}')
    entries: list[tuple[str | None, VerificationKey, bytes]] = []
    algorithms: frozenset[str]
    skipped: list[str] = []
    for position, jwk in enumerate(document["keys"]):
        if not isinstance(jwk, dict):
            skipped.append(f"key {position}: not a JSON object")
            continue
        kid = jwk.get("kid")
        where = f"key {position}" + (f" (kid {kid!r})" if isinstance(kid, str) else "")
        if kid is not None and not isinstance(kid, str):
            skipped.append(f"key {position}: its kid is not a string")
            continue
        try:
            algorithms, public = _key_algorithms(jwk)
        except ValueError as e:
            skipped.append(f"{where}: {e}")
            continue
        canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()
        entries.append((kid, VerificationKey(kid, algorithms, public), canonical))
    counts: dict[str | None, int] = {}
    for kid, _, _ in entries:
        counts[kid] = counts.get(kid, 0) + 1
    usable: list[tuple[str | None, VerificationKey, bytes]] = []
    for kid, key, canonical in entries:
        if kid is None and len(entries) > 1:
            skipped.append("a key without kid: only a set of one key may have one")
        elif counts[kid] > 1:
            skipped.append(f"kid {kid!r}: listed more than once, so none of them is used")
        else:
            usable.append((kid, key, canonical))
    if not usable:
        reasons = "; ".join(skipped) or "the set is empty"
        raise InvalidJwks(f"no usable key ({reasons})")
    digest = hashlib.sha256()
    for _, _, canonical in sorted(usable, key=lambda entry: entry[2]):
        digest.update(canonical)
    return KeySet(
        keys={kid: key for kid, key, _ in usable if kid is not None},
        only=usable[0][1] if len(usable) == 1 else None,
        fingerprint=digest.digest(),
        skipped=tuple(skipped),
    )


@dataclass(frozen=True, slots=True)
class JwtProvider:
    """What a provider's tokens are checked against (``auth.jwt[N]`` less its key source)."""

    name: str
    issuer: str
    audiences: frozenset[str] = frozenset()
    algorithms: frozenset[str] = frozenset({"RS256", "ES256"})
    clock_skew: float = 60.0
    forward_claims: tuple[tuple[str, str], ...] = ()
    forward: bool = False

    @classmethod
    def from_config(cls, config: JwtProviderConfig) -> JwtProvider:
        return cls(
            name=config.name,
            issuer=config.issuer,
            audiences=frozenset(config.audiences),
            algorithms=frozenset(config.algorithms),
            clock_skew=config.clock_skew,
            forward_claims=tuple(
                (claim, header.lower()) for claim, header in config.forward_claims
            ),
            forward=config.forward,
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    verified: Verified
    until: float


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _header_value(value: object) -> str:
    """A claim as a header value: printable ASCII strings as they are, anything else as
    ASCII JSON (so no claim can carry a line break or a control character upstream)."""
    if isinstance(value, str) and value.isascii() and value.isprintable():
        return value
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


class JwtAuthenticator:
    """Checks bearer tokens against every configured provider, with their current keys.

    Invariant: a cached entry was verified with the keys its provider holds now (entries
    go when :meth:`set_keys` changes them) and is returned only before its ``until``.

    :ivar verifications: signature checks done so far (a cache hit does none).
    """

    def __init__(
        self, providers: Iterable[JwtProvider], *, cache_size: int = CACHE_SIZE
    ) -> None:
        self.providers: dict[str, JwtProvider] = {}
        self._by_issuer: dict[str, JwtProvider] = {}
        for provider in providers:
            self.providers[provider.name] = provider
            self._by_issuer[provider.issuer] = provider
        self._keys: dict[str, KeySet] = {}
        self._cache: OrderedDict[bytes, _Entry] = OrderedDict()
        self._cache_size = cache_size
        self._jws = PyJWS()
        self.verifications = 0

    @classmethod
    def from_config(cls, configs: Sequence[JwtProviderConfig]) -> JwtAuthenticator:
        return cls(JwtProvider.from_config(config) for config in configs)

    # --- keys ---------------------------------------------------------------------

    def set_keys(self, provider: str, keys: KeySet) -> bool:
        """Give ``provider`` its keys; whether they differ from those it had (then its
        cached tokens are forgotten)."""
        old = self._keys.get(provider)
        self._keys[provider] = keys
        if old is not None and old.fingerprint == keys.fingerprint:
            return False
        stale = [d for d, entry in self._cache.items() if entry.verified.provider == provider]
        for digest in stale:
            del self._cache[digest]
        return True

    def keys_of(self, provider: str) -> KeySet | None:
        """The provider's current keys (``None``: never fetched)."""
        return self._keys.get(provider)

    @property
    def cached(self) -> int:
        return len(self._cache)

    # --- tokens -------------------------------------------------------------------

    def verify(self, token: str, now: float) -> Result:
        """Check ``token`` (the text after ``Bearer``) at time ``now``."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return Rejected(Reason.MALFORMED_TOKEN)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        entry = self._cache.get(digest)
        if entry is not None:
            if now < entry.until:
                self._cache.move_to_end(digest)
                return entry.verified
            del self._cache[digest]
        result = self._check(token, now)
        if isinstance(result, Verified):
            provider = self.providers[result.provider]
            until = min(result.exp + provider.clock_skew, now + CACHE_TTL)
            self._cache[digest] = _Entry(result, until)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def _check(self, token: str, now: float) -> Result:
        try:
            unverified = self._jws.decode_complete(token, options={"verify_signature": False})
            header: dict[str, Any] = unverified["header"]
            claims = json.loads(unverified["payload"])
        except (PyJWTError, ValueError, RecursionError, UnicodeError):
            return Rejected(Reason.MALFORMED_TOKEN)
        if not isinstance(claims, dict) or "crit" in header:
            return Rejected(Reason.MALFORMED_TOKEN)
        issuer = claims.get("iss")
        provider = self._by_issuer.get(issuer) if isinstance(issuer, str) else None
        if provider is None:
            return Rejected(Reason.WRONG_ISSUER)
        name = provider.name
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in provider.algorithms:
            return Rejected(Reason.ALGORITHM_NOT_ALLOWED, name)
        keys = self._keys.get(name)
        if keys is None:
            return Unavailable(name)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return Rejected(Reason.MALFORMED_TOKEN, name)
        key = keys.find(kid)
        if key is None:
            return Rejected(Reason.UNKNOWN_KEY, name)
        if alg not in key.algorithms:
            return Rejected(Reason.ALGORITHM_NOT_ALLOWED, name)
        self.verifications += 1
        try:
            self._jws.decode_complete(token, key.key, algorithms=[alg])
        except InvalidSignatureError:
            return Rejected(Reason.BAD_SIGNATURE, name)
        except InvalidAlgorithmError:
            return Rejected(Reason.ALGORITHM_NOT_ALLOWED, name)
        except (PyJWTError, ValueError, TypeError):
            return Rejected(Reason.MALFORMED_TOKEN, name)
        return self._claims(provider, claims, now)

    def _claims(self, provider: JwtProvider, claims: dict[str, Any], now: float) -> Result:
        name = provider.name
        skew = provider.clock_skew
        exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
        if not _number(exp) or any(v is not None and not _number(v) for v in (nbf, iat)):
            return Rejected(Reason.MALFORMED_TOKEN, name)
        assert exp is not None
        if now >= exp + skew:
            return Rejected(Reason.EXPIRED, name)
        if (nbf is not None and nbf > now + skew) or (iat is not None and iat > now + skew):
            return Rejected(Reason.NOT_YET_VALID, name)
        if provider.audiences:
            aud = claims.get("aud")
            named = [aud] if isinstance(aud, str) else aud
            if aud is not None and not (
                isinstance(named, list) and all(isinstance(a, str) for a in named)
            ):
                return Rejected(Reason.MALFORMED_TOKEN, name)
            if not named or provider.audiences.isdisjoint(named):
                return Rejected(Reason.WRONG_AUDIENCE, name)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            return Rejected(Reason.MALFORMED_TOKEN, name)
        headers = tuple(
            (header, _header_value(claims[claim]))
            for claim, header in provider.forward_claims
            if claims.get(claim) is not None
        )
        return Verified(name, subject, headers, float(exp), provider.forward)
