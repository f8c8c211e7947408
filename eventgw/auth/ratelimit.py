# -*- test-case-name: tests.test_ratelimit -*-
"""Rate limits: token buckets by prefix, per principal, address or rule.

Core module: imports the standard library and :mod:`eventgw.config` only; time comes in
as ``now``.

Each ``rate_limits[]`` entry is a :class:`Limit`: buckets of ``burst`` tokens refilled at
``per_second``; a request takes one token or is refused with the wait until the next
one (``Retry-After``).  The longest matching prefix picks the limit (none: no limit).
``by`` chooses the bucket: ``client`` the principal (the address when anonymous),
``ip`` the address, ``route`` one bucket for the whole rule.

Memory is bounded whatever the number of distinct clients: each limit keeps at most
:data:`MAX_BUCKETS` buckets in least-recently-used order and forgets the oldest.  A
forgotten bucket starts full when its client returns, so eviction can only be
generous: an attacker who spreads requests over more than :data:`MAX_BUCKETS`
distinct keys (addresses, when anonymous) gets a fresh burst for each of them -- which
``by: client``/``ip`` gives any key anyway -- and can push a *victim's* bucket out,
which only refills the victim.  What eviction cannot do is make a bucket emptier than
its own traffic made it.  Against a flood from many addresses, a ``by: route`` limit
caps the rule as a whole.

Limits hold per process: with N workers or replicas each keeps its own buckets, so the
fleet admits up to N times the configured rate.

The headers follow draft-ietf-httpapi-ratelimit-headers in its current form:
``RateLimit-Policy: "NAME";q=BURST;w=WINDOW`` (``WINDOW``: seconds to refill a whole
bucket, rounded up) and ``RateLimit: "NAME";r=REMAINING;t=SECONDS`` (``SECONDS``: until
the bucket is full again, or, with nothing remaining, until the next request is
allowed -- the ``Retry-After`` value).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from eventgw.config import RateLimit

__all__ = ["MAX_BUCKETS", "Limit", "Limited", "RateLimiter", "Taken"]

#: Buckets kept per limit (least recently used forgotten first): ~100 bytes each.
MAX_BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class Taken:
    """The request took a token; ``headers`` describe the bucket after it."""

    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Limited:
    """No token: 429 after ``retry_after`` whole seconds."""

    retry_after: int
    headers: list[tuple[bytes, bytes]]


class Limit:
    """One ``rate_limits`` entry and its buckets (``[tokens, last refill time]``)."""

    __slots__ = ("_buckets", "_policy", "capacity", "rule")

    def __init__(self, rule: RateLimit, capacity: int = MAX_BUCKETS) -> None:
        self.rule = rule
        self.capacity = capacity
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        window = math.ceil(rule.burst / rule.per_second)
        self._policy = (
            b"ratelimit-policy",
            f'"{_quoted(rule.name)}";q={rule.burst};w={window}'.encode(),
        )

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> Taken | Limited:
        """Take a token from ``key``'s bucket at time ``now``."""
        rule = self.rule
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            bucket = [float(rule.burst), now]
            buckets[key] = bucket
            if len(buckets) > self.capacity:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(float(rule.burst), bucket[0] + elapsed * rule.per_second)
                bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            remaining = int(bucket[0])
            full_in = math.ceil((rule.burst - bucket[0]) / rule.per_second)
            return Taken(self._headers(remaining, full_in))
        wait = max(1, math.ceil((1.0 - bucket[0]) / rule.per_second))
        return Limited(wait, self._headers(0, wait))

    def _headers(self, remaining: int, seconds: int) -> list[tuple[bytes, bytes]]:
        name = _quoted(self.rule.name)
        return [
            self._policy,
            (b"ratelimit", f'"{name}";r={remaining};t={seconds}'.encode()),
        ]


def _quoted(name: str) -> str:
    # An sf-string: backslash and double quote escaped.
    return name.replace("\\", "\\\\").replace('"', '\\"')


class RateLimiter:
    """Every configured limit, longest prefix first.

    :param previous: the limiter of the configuration being replaced (a reload): a
        limit whose rule is unchanged keeps its buckets.
    """

    __slots__ = ("limits",)

    limits: tuple[Limit, ...]

    def __init__(self, rules: Sequence[RateLimit], previous: RateLimiter | None = None) -> None:
        kept: dict[RateLimit, Limit] = {}
        if previous is not None:
            kept = {limit.rule: limit for limit in previous.limits}
        ordered = sorted(rules, key=lambda rule: len(rule.prefix), reverse=True)
        limits: list[Limit] = []
        for rule in ordered:
            old = kept.pop(rule, None)
            limits.append(old if old is not None else Limit(rule))
        self.limits = tuple(limits)

    def limit_for(self, path: str) -> Limit | None:
        for limit in self.limits:
            if path.startswith(limit.rule.prefix):
                return limit
        return None

    def check(
        self, path: str, principal: str | None, peer: str, now: float
    ) -> Taken | Limited | None:
        """Take a token for a request (``None``: no limit applies)."""
        limit = self.limit_for(path)
        if limit is None:
            return None
        by = limit.rule.by
        if by == "route":
            key = ""
        elif by == "ip" or principal is None:
            key = peer
        else:
            key = principal
        return limit.take(key, now)
