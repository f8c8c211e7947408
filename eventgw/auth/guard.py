# -*- test-case-name: tests.test_auth_guard -*-
"""Who may call: credentials in, a principal and the headers to forward out -- or a refusal.

Core module: imports the standard library, :mod:`eventgw.config`,
:mod:`eventgw.exchange` and :mod:`eventgw.auth.jwt` (the bearer results) only; it
reads no clock (``now`` comes in) and no socket (the client certificate's identity is
already in ``RequestHead.client_identity``).

:meth:`Guard.check` runs once per request, after a CORS preflight has been answered and
before the rate limit and the flow.  It

1. reads the credentials: ``x-api-key`` (when ``auth.api_keys`` is configured),
   ``authorization: Bearer`` (when a bearer verifier is plugged in: the JWT providers),
   the TLS client certificate's identity (when ``auth.client_certificates`` is);
2. verifies each one presented: a bad one is a 401 naming the reason, whatever the rule
   (``unknown api key``, or the verifier's reason), a verifier without keys a 503;
3. finds the access rule (the longest plain-string prefix of the HTTP path or gRPC
   method path; ``access.default`` when none matches) and decides: ``anyone`` lets
   everybody in; nobody identified is a 401 ``missing credentials`` with
   ``WWW-Authenticate`` naming the schemes the rule accepts; identified but not listed
   is a 403;
4. rewrites the headers the flow forwards: the credentials (``x-api-key``, the bearer
   ``authorization`` unless its provider forwards it) and every header the gateway
   itself sets (``x-eventgw-client``, the configured claim headers) are removed, then
   ``x-eventgw-client`` (``jwt:NAME:SUB``, ``key:NAME`` or ``cert:IDENTITY``; absent
   when anonymous) and the claim headers are added.

API keys: the presented key is hashed with SHA-256 and the digest compared with every
configured digest by :func:`hmac.compare_digest`, without stopping at the first match.
A dict keyed by digest would be as safe (its timing depends on the digest of the
attacker's own guess, which says nothing usable about a stored key without a SHA-256
preimage), but the loop keeps to "secrets are compared in constant time" literally at
the cost of a few microseconds for the handful of keys a gateway has.

The bearer kind plugs in as a :class:`BearerVerifier`: ``verify(token, now)`` returning
:mod:`eventgw.auth.jwt`'s ``Verified``, ``Rejected`` or ``Unavailable`` -- in the
gateway, :class:`eventgw.auth.jwks.JwtAuth`, which also keeps the JWKS fresh.  The
claim headers of every provider's ``forward_claims`` are removed from what clients send
whichever provider (if any) verified the token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

from eventgw.auth.jwt import Rejected, Result, Unavailable
from eventgw.config import AccessConfig, AuthConfig
from eventgw.exchange import Headers, RequestHead

__all__ = [
    "API_KEY",
    "CLIENT_HEADER",
    "Admitted",
    "BearerVerifier",
    "Denied",
    "Guard",
    "without_client_header",
]

#: The identity header the upstream (and the Event Broker, as metadata) receives.
CLIENT_HEADER: Final = b"x-eventgw-client"
#: Where clients send an API key.
API_KEY: Final = b"x-api-key"
AUTHORIZATION: Final = b"authorization"
_BEARER: Final = b"bearer "

MISSING: Final = "missing credentials"
UNKNOWN_KEY: Final = "unknown api key"
FORBIDDEN: Final = "permission denied"
UNAVAILABLE: Final = "token verification keys unavailable"

#: The 401 reasons a bearer verifier may give (anything else counts as malformed).
TOKEN_REASONS: Final = frozenset(
    {
        "expired", "not yet valid", "bad signature", "unknown key", "wrong issuer",
        "wrong audience", "algorithm not allowed", "malformed token",
    }
)


class BearerVerifier(Protocol):
    """Verifies ``authorization: Bearer`` tokens (the JWT providers of ``auth.jwt``)."""

    def verify(self, token: str, now: float) -> Result: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """The request goes on: ``headers`` is what the flow forwards."""

    principal: str | None
    headers: Headers


@dataclass(frozen=True, slots=True)
class Denied:
    """The request is refused with ``status`` (401, 403, 503) and ``message``.

    :ivar reason: the ``reason`` label of ``eventgw_auth_denied_total``.
    :ivar headers: ``WWW-Authenticate`` challenges (401 only).
    """

    status: int
    message: str
    reason: str
    headers: Headers = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Rule:
    prefix: bytes
    allow: frozenset[str]
    challenges: Headers


class Guard:
    """The access decision for one configuration (rebuilt on reload)."""

    __slots__ = ("_bearer", "_certs", "_default", "_keys", "_rules", "_strip", "open")

    def __init__(
        self,
        auth: AuthConfig,
        access: AccessConfig,
        bearer: BearerVerifier | None = None,
    ) -> None:
        self._keys = tuple((key.name, key.sha256) for key in auth.api_keys)
        self._certs = auth.client_certificates is not None
        self._bearer = bearer
        configured = []
        if bearer is not None:
            configured.append("Bearer")
        if self._keys:
            configured.append("ApiKey")
        rules = sorted(access.rules, key=lambda rule: len(rule.prefix), reverse=True)
        self._rules = tuple(
            _Rule(
                rule.prefix.encode("utf-8"),
                frozenset(rule.allow),
                _challenges(rule.allow, configured),
            )
            for rule in rules
        )
        self._default = _Rule(
            b"", frozenset(access.default), _challenges(access.default, configured)
        )
        strip = {CLIENT_HEADER}
        for provider in auth.jwt:
            strip |= {header.encode("ascii") for _, header in provider.forward_claims}
        self._strip = frozenset(strip)
        #: Nothing to check: no credentials configured and everyone allowed everywhere.
        self.open = (
            bearer is None
            and not self._keys
            and not self._certs
            and not self._rules
            and "anyone" in self._default.allow
        )

    def rule_for(self, path: bytes) -> frozenset[str]:
        """Who may call ``path`` (an HTTP path or a gRPC method path)."""
        return self._rule(path).allow

    def _rule(self, path: bytes) -> _Rule:
        for rule in self._rules:
            if path.startswith(rule.prefix):
                return rule
        return self._default

    def check(self, head: RequestHead, now: float) -> Admitted | Denied:
        """Admit ``head`` (with the headers to forward) or refuse it."""
        headers = head.headers
        if self.open:
            return Admitted(None, without_client_header(headers))
        rule = self._rule(head.path)
        satisfied: set[str] = set()
        principal: str | None = None
        extra: Headers = []
        keep_bearer = False
        presented_key = presented_token = None
        for name, value in headers:
            if name == API_KEY and self._keys and presented_key is None:
                presented_key = value
            elif (
                name == AUTHORIZATION
                and self._bearer is not None
                and presented_token is None
                and value[:7].lower() == _BEARER
            ):
                presented_token = value[7:].strip()
        if presented_token is not None:
            assert self._bearer is not None
            result = self._bearer.verify(presented_token.decode("latin-1"), now)
            if isinstance(result, Unavailable):
                return Denied(503, UNAVAILABLE, "unavailable")
            if isinstance(result, Rejected):
                reason = str(result.reason)
                if reason not in TOKEN_REASONS:
                    reason = "malformed token"
                return Denied(401, reason, reason.replace(" ", "_"), rule.challenges)
            principal = result.identity
            if not principal.isprintable():
                # The subject goes upstream in a header: no control characters.
                return Denied(401, "malformed token", "malformed_token", rule.challenges)
            satisfied |= {f"jwt:{result.provider}", principal}
            keep_bearer = result.forward
            extra = [
                (name.encode("ascii"), value.encode("utf-8", "replace"))
                for name, value in result.headers
            ]
        if presented_key is not None:
            key_name = self._key_name(presented_key)
            if key_name is None:
                return Denied(401, UNKNOWN_KEY, "unknown_api_key", rule.challenges)
            satisfied.add(f"key:{key_name}")
            principal = principal or f"key:{key_name}"
        identity = head.client_identity if self._certs else None
        if identity is not None:
            satisfied.add(f"cert:{identity}")
            principal = principal or f"cert:{identity}"
        if principal is not None:
            satisfied.add("authenticated")
        allow = rule.allow
        if "anyone" not in allow and allow.isdisjoint(satisfied):
            if principal is None:
                return Denied(401, MISSING, "missing_credentials", rule.challenges)
            return Denied(403, FORBIDDEN, "forbidden")
        return Admitted(principal, self._forwarded(headers, principal, extra, keep_bearer))

    def _key_name(self, presented: bytes) -> str | None:
        digest = hashlib.sha256(presented).digest()
        found = None
        for name, stored in self._keys:
            # Every digest is compared, match or not: no early exit.
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        return found

    def _forwarded(
        self, headers: Headers, principal: str | None, extra: Headers, keep_bearer: bool
    ) -> Headers:
        strip = self._strip
        keys = bool(self._keys)
        bearer = self._bearer is not None and not keep_bearer
        out: Headers = []
        for item in headers:
            name = item[0]
            if name in strip or (keys and name == API_KEY):
                continue
            if bearer and name == AUTHORIZATION and item[1][:7].lower() == _BEARER:
                continue
            out.append(item)
        if principal is not None:
            out.append((CLIENT_HEADER, principal.encode("utf-8", "replace")))
        out.extend(extra)
        return out


def without_client_header(headers: Headers) -> Headers:
    """``headers`` without a client's own ``x-eventgw-client`` (the same list when it
    has none, which is nearly always)."""
    for name, _ in headers:
        if name == CLIENT_HEADER:
            return [item for item in headers if item[0] != CLIENT_HEADER]
    return headers


def _challenges(allow: Iterable[str], configured: list[str]) -> Headers:
    """``WWW-Authenticate`` for a rule: the schemes its principals use (``authenticated``:
    every configured one; none named: every configured one, else ``Bearer``)."""
    schemes: list[str] = []
    for principal in allow:
        kind = principal.partition(":")[0]
        wanted = {"jwt": ["Bearer"], "key": ["ApiKey"], "authenticated": configured}.get(kind, [])
        schemes += [scheme for scheme in wanted if scheme not in schemes]
    if not schemes:
        schemes = list(configured) or ["Bearer"]
    order = {"Bearer": 0, "ApiKey": 1}
    schemes.sort(key=order.__getitem__)
    return [(b"www-authenticate", f'{scheme} realm="eventgw"'.encode()) for scheme in schemes]
