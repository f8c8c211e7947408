"""What the access checks cost per request, in the gateway's own code (no sockets).

Runs ``Gateway.start_exchange`` on an in-memory request against a target that does
nothing, with each configuration below, and prints microseconds per request (best of
five runs).  The difference to ``open`` is what a request pays for the checks.

    PYTHONPATH=. .venv/bin/python bench/access/check_cost.py
"""

from __future__ import annotations

import hashlib
import timeit
from typing import Any

from twisted.internet.task import Clock

from eventgw.auth.cors import CorsPolicy
from eventgw.auth.guard import Guard
from eventgw.auth.ratelimit import RateLimiter
from eventgw.config import AccessConfig, AccessRule, ApiKey, AuthConfig, CorsRule, RateLimit
from eventgw.exchange import StaticReply
from eventgw.gateway import Gateway
from tests.support import RecordingWriter, make_head

KEY = b"bench-key"
HEADERS = [(b"user-agent", b"bench"), (b"accept", b"*/*"), (b"x-request-id", b"abc"),
           (b"content-type", b"application/json"), (b"traceparent", b"00-1-2-01")]


class NullTarget:
    def start_exchange(self, head: Any, writer: Any) -> Any:
        return StaticReply()

    def close(self) -> Any:
        return None


def gateway(**kwargs: Any) -> Gateway:
    null = NullTarget()
    return Gateway(api=null, events=null, grpc=null, reactor=Clock(), **kwargs)  # type: ignore[arg-type]


def cost(gw: Gateway, headers: list[tuple[bytes, bytes]], n: int = 20000) -> float:
    def one() -> None:
        gw.start_exchange(make_head(target=b"/api/items", headers=headers), RecordingWriter())

    return min(timeit.repeat(one, number=n, repeat=5)) / n * 1e6


def main() -> None:
    others = [ApiKey(f"k{i}", hashlib.sha256(b"%d" % i).digest()) for i in range(9)]
    keys = AuthConfig(api_keys=(*others, ApiKey("bench", hashlib.sha256(KEY).digest())))
    rules = AccessConfig(default=(), rules=(AccessRule("/api", ("key:bench",)),))
    limit = RateLimiter([RateLimit("/api", 1e9, 1_000_000_000, "client", "api")])
    cors = CorsPolicy([CorsRule("/api", ("https://app",))])
    with_key = [*HEADERS, (b"x-api-key", KEY)]
    cases = [
        ("open (nothing configured)", gateway(), HEADERS),
        ("api key (10 keys) + rule", gateway(guard=Guard(keys, rules)), with_key),
        ("api key + rule + rate limit", gateway(guard=Guard(keys, rules), limiter=limit), with_key),
        ("api key + rule + rate limit + cors origin",
         gateway(guard=Guard(keys, rules), limiter=limit, cors=cors),
         [*with_key, (b"origin", b"https://app")]),
    ]
    base = None
    for name, gw, headers in cases:
        us = cost(gw, headers)
        base = us if base is None else base
        print(f"{name:45s} {us:6.2f} us/request  (+{us - base:5.2f})")


if __name__ == "__main__":
    main()
