# -*- test-case-name: tests.test_cors -*-
"""CORS: the gateway answers preflights and marks responses to allowed origins.

Core module: imports the standard library, :mod:`eventgw.config` and
:mod:`eventgw.exchange` only.

The longest ``cors[].prefix`` matching the path picks the rule (none: no CORS at all,
the request goes on as any other).  A *preflight* is ``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``; browsers send it without credentials, so it is
answered before the access rules, always with 204.  When the origin, the method and
every requested header are allowed, the answer carries ``Access-Control-Allow-Origin``,
``-Allow-Methods``, ``-Allow-Headers``, ``-Max-Age`` (and ``-Allow-Credentials`` when
configured); otherwise it carries none of them.  A refused preflight stays a 204 rather
than a 403: the Fetch standard's CORS check fails on the missing
``Access-Control-Allow-Origin`` whatever the status, the browser shows the page the
same error either way, and a 2xx keeps the answer uniform for caches and scanners.

A real response to an allowed origin gets ``Access-Control-Allow-Origin`` (the origin
itself, or ``*`` for a ``"*"`` rule without credentials), ``Vary: Origin``, and
``Access-Control-Expose-Headers`` / ``-Allow-Credentials`` when configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from eventgw.config import CorsRule
from eventgw.exchange import Headers, RequestHead

__all__ = ["CorsPolicy", "Preflight"]

_VARY_PREFLIGHT: Final = (
    b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
)


class Preflight:
    """The answer to a preflight: 204 with ``headers`` (no Allow-* when refused)."""

    __slots__ = ("allowed", "headers")

    def __init__(self, allowed: bool, headers: Headers) -> None:
        self.allowed = allowed
        self.headers = headers


class _Rule:
    __slots__ = ("any_origin", "headers", "methods", "origins", "preflight", "rule")

    def __init__(self, rule: CorsRule) -> None:
        self.rule = rule
        self.any_origin = "*" in rule.allow_origins
        self.origins = frozenset(o.encode() for o in rule.allow_origins)
        self.methods = frozenset(m.encode() for m in rule.allow_methods)
        self.headers = frozenset(h.encode() for h in rule.allow_headers)
        preflight: Headers = [
            (b"access-control-allow-methods", ", ".join(rule.allow_methods).encode()),
            (b"access-control-max-age", str(rule.max_age).encode()),
        ]
        if rule.allow_headers:
            preflight.append(
                (b"access-control-allow-headers", ", ".join(rule.allow_headers).encode())
            )
        if rule.allow_credentials:
            preflight.append((b"access-control-allow-credentials", b"true"))
        self.preflight = preflight

    def allows(self, origin: bytes) -> bool:
        return self.any_origin or origin in self.origins

    def allow_origin(self, origin: bytes) -> bytes:
        return b"*" if self.any_origin and not self.rule.allow_credentials else origin


class CorsPolicy:
    """Every ``cors`` rule, longest prefix first."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Sequence[CorsRule]) -> None:
        ordered = sorted(rules, key=lambda rule: len(rule.prefix), reverse=True)
        self._rules = tuple((rule.prefix.encode(), _Rule(rule)) for rule in ordered)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def _rule(self, path: bytes) -> _Rule | None:
        for prefix, rule in self._rules:
            if path.startswith(prefix):
                return rule
        return None

    def preflight(self, head: RequestHead) -> Preflight | None:
        """The gateway's answer when ``head`` is a preflight under a rule, else ``None``."""
        if head.method != b"OPTIONS":
            return None
        origin = head.header(b"origin")
        method = head.header(b"access-control-request-method")
        if origin is None or method is None:
            return None
        rule = self._rule(head.path)
        if rule is None:
            return None
        requested = head.header(b"access-control-request-headers") or b""
        wanted = {h.strip().lower() for h in requested.split(b",")} - {b""}
        if not rule.allows(origin) or method not in rule.methods or not wanted <= rule.headers:
            return Preflight(False, [_VARY_PREFLIGHT])
        headers = [
            (b"access-control-allow-origin", rule.allow_origin(origin)),
            *rule.preflight,
            _VARY_PREFLIGHT,
        ]
        return Preflight(True, headers)

    def response_headers(self, head: RequestHead) -> Headers | None:
        """Headers for the response to an allowed origin's request (``None``: nothing)."""
        origin = head.header(b"origin")
        if origin is None:
            return None
        rule = self._rule(head.path)
        if rule is None or not rule.allows(origin):
            return None
        out: Headers = [(b"access-control-allow-origin", rule.allow_origin(origin))]
        out.append((b"vary", b"Origin"))
        if rule.rule.expose_headers:
            out.append(
                (b"access-control-expose-headers", ", ".join(rule.rule.expose_headers).encode())
            )
        if rule.rule.allow_credentials:
            out.append((b"access-control-allow-credentials", b"true"))
        return out
