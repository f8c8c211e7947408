# -*- test-case-name: tests.test_balancer -*-
"""Choosing a host of an upstream with several: balancing, ejection and health state.

Core module: imports only the standard library and the runtime configuration.  It never
reads a clock (every decision takes ``now``) and takes its randomness from a
:class:`random.Random` it is given, so tests replay it exactly.

:class:`Balancer` holds one :class:`HostState` per host (``host:port``) and decides:

* **which host** a request or gRPC call goes to: least-request with the power of two
  choices (two distinct available hosts drawn at random, the one with fewer requests in
  flight wins) or round-robin;
* **passive ejection**: ``consecutive_failures`` failures in a row (a connect failure, a
  reset, an HTTP 502/503/504, a gRPC UNAVAILABLE) leave a host out for ``eject_for``
  seconds, twice as long at each ejection that follows soon after, at most
  :data:`MAX_EJECT_FACTOR` times ``eject_for``.  At most :data:`MAX_EJECTED_PERCENT` of
  the hosts are out at a time, and never the last available one (Envoy's
  ``max_ejection_percent``): a set of one host never ejects it;
* **active health**: ``unhealthy_after`` failed checks in a row mark a host unhealthy,
  ``healthy_after`` passed ones healthy again (and end an ejection early).  When no host
  is healthy, :meth:`Balancer.pick` returns ``None`` and the flow answers at once
  (502, UNAVAILABLE, 503);
* **jitter**: :func:`jittered` spreads each check's delay, so gateways and hosts do not
  probe in step.

The shell (:mod:`eventgw.upstream.cluster`) owns the pools and timers and reports
outcomes here; hosts that leave the set (DNS, reload) are simply removed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from eventgw.config.runtime import BALANCE_ROUND_ROBIN, Balancing

__all__ = [
    "MAX_EJECTED_PERCENT",
    "MAX_EJECT_FACTOR",
    "Balancer",
    "HostState",
    "jittered",
]

#: An ejection lasts at most this many times ``eject_for`` however often it repeats.
MAX_EJECT_FACTOR: Final = 10
#: At most this share of the hosts is ejected at a time (Envoy's default is 10%, which
#: would never eject one of fewer than ten hosts; half keeps small sets useful).
MAX_EJECTED_PERCENT: Final = 50
#: Each check's delay is the interval times a factor in this range.
JITTER: Final = (0.8, 1.2)


def jittered(interval: float, rng: random.Random) -> float:
    """The delay until a host's next check: ``interval`` spread by :data:`JITTER`."""
    low, high = JITTER
    return interval * rng.uniform(low, high)


@dataclass(slots=True)
class HostState:
    """One host's counters and state.

    :ivar key: ``host:port`` (IPv6 in brackets): unique within an upstream.
    :ivar active: requests or calls in flight on it now.
    :ivar ejected_until: ``now`` when its current ejection ends (0: not ejected).
    :ivar ejections: ejections in a row (the multiplier of the next one).
    :ivar healthy: the active health checks' verdict (always true without checks).
    """

    key: str
    active: int = 0
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    ejections: int = 0
    ejected_total: int = 0
    last_ejected_at: float = 0.0
    healthy: bool = True
    checks_passed: int = 0
    checks_failed: int = 0

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def available(self, now: float) -> bool:
        return self.healthy and not self.ejected(now)

    def state(self, now: float) -> str:
        """``available``, ``ejected`` or ``unhealthy`` (for the admin page and metrics)."""
        if not self.healthy:
            return "unhealthy"
        if self.ejected(now):
            return "ejected"
        return "available"


class Balancer:
    """The hosts of one upstream and the choice among them.

    Invariant: ``hosts`` keeps the order hosts were added in (round-robin goes through
    them in that order); a key appears once.
    """

    __slots__ = ("_next", "_rng", "balance", "hosts", "policy")

    def __init__(self, keys: Iterable[str], policy: Balancing, rng: random.Random) -> None:
        self.policy = policy
        self.balance = policy.balance
        self._rng = rng
        self._next = 0
        self.hosts: dict[str, HostState] = {}
        self.update(keys)

    # -- the host set ------------------------------------------------------------------

    def update(self, keys: Iterable[str]) -> tuple[list[str], list[str]]:
        """Make the set exactly ``keys``; returns ``(added, removed)``.  A host in both
        keeps its state."""
        wanted = list(dict.fromkeys(keys))
        removed = [key for key in self.hosts if key not in wanted]
        for key in removed:
            del self.hosts[key]
        added = [key for key in wanted if key not in self.hosts]
        for key in added:
            self.hosts[key] = HostState(key)
        return added, removed

    # -- choosing -----------------------------------------------------------------------

    def pick(self, now: float, exclude: Iterable[str] = ()) -> HostState | None:
        """The host for the next request, or ``None`` when none is available.

        ``exclude``: hosts already tried by this request (a retry goes elsewhere);
        when only excluded hosts are left, ``None``.
        """
        skip = frozenset(exclude)
        candidates = [h for h in self.hosts.values() if h.available(now) and h.key not in skip]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if self.balance == BALANCE_ROUND_ROBIN:
            host = candidates[self._next % len(candidates)]
            self._next += 1
            return host
        first, second = self._rng.sample(candidates, 2)
        return second if second.active < first.active else first

    def started(self, host: HostState) -> None:
        """A request or call went to ``host``."""
        host.active += 1
        host.requests += 1

    def finished(self, host: HostState, *, failed: bool, now: float) -> bool:
        """It ended; ``failed``: a connect failure, reset, 502/503/504 or UNAVAILABLE.
        Returns whether this ejected the host."""
        if host.active > 0:
            host.active -= 1
        return self.outcome(host, failed=failed, now=now)

    def outcome(self, host: HostState, *, failed: bool, now: float) -> bool:
        """Count a success or failure of ``host`` (without a request in flight: a
        connect attempt); returns whether this ejected it."""
        if not failed:
            host.consecutive_failures = 0
            return False
        host.failures += 1
        host.consecutive_failures += 1
        if host.ejected(now) or host.consecutive_failures < self.policy.consecutive_failures:
            return False
        return self._eject(host, now)

    def _eject(self, host: HostState, now: float) -> bool:
        if not self._may_eject(now):
            return False
        eject_for = self.policy.eject_for
        if host.ejections and now - host.last_ejected_at > MAX_EJECT_FACTOR * eject_for * 2:
            # Long since the last one: start over from eject_for.
            host.ejections = 0
        factor = min(2**host.ejections, MAX_EJECT_FACTOR)
        host.ejections += 1
        host.ejected_total += 1
        host.last_ejected_at = now
        host.ejected_until = now + eject_for * factor
        host.consecutive_failures = 0
        return True

    def _may_eject(self, now: float) -> bool:
        total = len(self.hosts)
        ejected = sum(1 for h in self.hosts.values() if h.ejected(now))
        available = sum(1 for h in self.hosts.values() if h.available(now))
        if available <= 1:
            return False
        return (ejected + 1) * 100 <= total * MAX_EJECTED_PERCENT

    # -- active health checks -------------------------------------------------------

    def checked(self, host: HostState, *, passed: bool) -> bool:
        """One health check's result; returns whether the host's health changed."""
        health = self.policy.health_check
        if health is None:
            return False
        if passed:
            host.checks_passed += 1
            host.checks_failed = 0
            if host.checks_passed >= health.healthy_after:
                changed = not host.healthy
                host.healthy = True
                if host.ejected_until:
                    # Passing the checks ends an ejection early.
                    host.ejected_until = 0.0
                    changed = True
                return changed
            return False
        host.checks_failed += 1
        host.checks_passed = 0
        if host.healthy and host.checks_failed >= health.unhealthy_after:
            host.healthy = False
            return True
        return False

    # -- reporting --------------------------------------------------------------------

    def snapshot(self, now: float) -> list[dict[str, object]]:
        """Every host's state, for the admin page."""
        return [
            {
                "host": h.key,
                "state": h.state(now),
                "healthy": h.healthy,
                "active": h.active,
                "requests": h.requests,
                "failures": h.failures,
                "consecutive_failures": h.consecutive_failures,
                "ejections": h.ejected_total,
                "ejected_for": round(max(0.0, h.ejected_until - now), 3),
            }
            for h in self.hosts.values()
        ]

