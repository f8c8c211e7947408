# -*- test-case-name: tests.test_cluster -*-
"""The hosts of one upstream: a pool per host, DNS re-resolution, health-check timers.

Shell module: carries out what :mod:`eventgw.upstream.balancer` decides.  A
:class:`Cluster` is built by a flow's target for ``master_api.http``,
``master_api.grpc`` or ``event_broker.grpc``; the flow asks :meth:`Cluster.pick` for a
:class:`Host` per request or gRPC call, reports :meth:`Cluster.started` and
:meth:`Cluster.finished`, and uses ``host.pool`` (an ``UpstreamPool`` or a
``GrpcConnectionPool``, one per host, made by the flow's ``make_pool``).

* Host names are resolved every ``resolve_interval`` through the reactor's
  ``IHostnameResolver`` (getaddrinfo on the reactor's thread pool, never blocking the
  reactor); each address is a host, keyed ``address:port``.  Until the first answer (and
  whenever resolution fails or finds nothing) the name itself stands for its host, and
  its pool connects by name.  IP addresses are never resolved.
* A host that leaves the set (DNS, or a reload that dropped it) drains: its pool closes
  once nothing of it is in flight.
* Active checks (``health_check``): each host is probed with the flow's ``probe`` every
  ``interval`` (jittered), the first probe at a random point of the first interval.
* On reload, :meth:`Cluster.take_over` hands the pools of hosts present before and
  after from the old cluster to the new one, so their connections stay; the old
  cluster's :meth:`close` then closes only what it still owns.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IResolutionReceiver
from twisted.logger import Logger
from zope.interface import implementer

from eventgw.admin import metrics
from eventgw.config import Balancing
from eventgw.upstream.balancer import Balancer, HostState, jittered

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime

__all__ = ["MAX_HOSTS", "Cluster", "Host", "host_key", "same_pools"]

#: Hosts one upstream may have (a DNS answer beyond this is cut): bounds the pools, the
#: timers and the metrics' label values.
MAX_HOSTS = 64

P = TypeVar("P")


def host_key(host: str, port: int) -> str:
    """``host:port``, IPv6 addresses in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def same_pools(old: object, new: object) -> bool:
    """Whether two configurations of an upstream (``ApiUpstream``, ``GrpcUpstream``,
    ``BrokerUpstream``) differ at most in their hosts and balancing, so a host both
    name may keep its pool (and its connections) across a reload."""
    hosts = ("host", "port", "url", "address", "target", "hosts", "balancing")

    def rest(config: object) -> dict[str, object]:
        names = getattr(config, "__dataclass_fields__", {})
        return {n: getattr(config, n) for n in names if n not in hosts}

    return type(old) is type(new) and rest(old) == rest(new)


def _literal(host: str) -> bool:
    return bool(isIPAddress(host) or isIPv6Address(host))


@dataclass(eq=False)
class Host(Generic[P]):
    """One host: where to connect, its pool and its balancing state.

    :ivar name: the configured host name (TLS server name, ``Host``/``:authority``).
    :ivar address: what the pool connects to (an IP address, or ``name`` itself).
    """

    key: str
    name: str
    address: str
    port: int
    pool: P
    state: HostState
    _probe_timer: IDelayedCall | None = field(default=None, repr=False)


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects one resolution's addresses."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolutionInProgress: object) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if isinstance(host, str) and host not in self.found:
            self.found.append(host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.found)


class Cluster(Generic[P]):
    """Every host of one upstream and their pools.

    :param name: the upstream's label (``master_api_http``, ``master_api_grpc``,
        ``event_broker``) in metrics and on the admin page.
    :param entries: the configured ``(host, port)`` pairs.
    :param make_pool: a new pool for ``(name, address, port)``.
    :param close_pool: closes a pool (fires when its connections are gone).
    :param probe: one active check of a host (fires ``True`` when it passed); used only
        with ``balancing.health_check``.
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        entries: Sequence[tuple[str, int]],
        balancing: Balancing,
        *,
        make_pool: Callable[[str, str, int], P],
        close_pool: Callable[[P], Deferred[None]],
        probe: Callable[[Host[P]], Deferred[bool]] | None = None,
        reactor: IReactorTime,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.entries = tuple(dict.fromkeys(entries))
        self.balancing = balancing
        self.reactor = reactor
        self._make_pool = make_pool
        self._close_pool = close_pool
        self._probe = probe
        self._rng = rng if rng is not None else random.Random()
        # What each name resolved to last (a name maps to itself until then).
        self._resolved: dict[tuple[str, int], list[str]] = {}
        self.hosts: dict[str, Host[P]] = {}
        self.balancer = Balancer((), balancing, self._rng)
        # Hosts that left the set, their pools closing once idle.
        self.draining: list[Host[P]] = []
        # Pools taken over by a newer cluster: no longer ours to close.
        self._handed_over: set[int] = set()
        # What take_over took, for give_back.
        self._taken: list[tuple[Cluster[P], P]] = []
        self._resolve_timer: IDelayedCall | None = None
        self._running = False
        self._closed = False
        self._apply()

    # -- the flows' side -----------------------------------------------------------------

    def pick(self, exclude: Iterable[str] = ()) -> Host[P] | None:
        """The host for the next request or call; ``None`` when none is available."""
        state = self.balancer.pick(self.reactor.seconds(), exclude)
        return None if state is None else self.hosts[state.key]

    def started(self, host: Host[P]) -> None:
        self.balancer.started(host.state)
        metrics.record_upstream_host(self.name, host.key, "request")

    def finished(self, host: Host[P], *, failed: bool) -> None:
        """A request or call on ``host`` ended; ``failed`` as the balancer counts it."""
        ejected = self.balancer.finished(host.state, failed=failed, now=self.reactor.seconds())
        self._counted(host, failed, ejected)
        if host in self.draining and host.state.active == 0:
            self._retire(host)

    def connect_failed(self, host: Host[P]) -> None:
        """A connection to ``host`` failed before a request reached it (it is retried
        elsewhere): a failure for ejection, with no request in flight to end."""
        ejected = self.balancer.outcome(host.state, failed=True, now=self.reactor.seconds())
        self._counted(host, True, ejected)

    def _counted(self, host: Host[P], failed: bool, ejected: bool) -> None:
        if failed:
            metrics.record_upstream_host(self.name, host.key, "failure")
        if ejected:
            metrics.record_upstream_host(self.name, host.key, "ejected")
            self.log.warn(
                "{upstream} host {host} ejected for {seconds:g}s after {failures} failures "
                "in a row",
                upstream=self.name,
                host=host.key,
                seconds=host.state.ejected_until - self.reactor.seconds(),
                failures=self.balancing.consecutive_failures,
            )

    def busy(self) -> bool:
        """Whether a request or call is in flight on any host (draining ones included)."""
        return any(h.state.active for h in (*self.hosts.values(), *self.draining))

    @property
    def all_hosts(self) -> list[Host[P]]:
        return [*self.hosts.values(), *self.draining]

    # -- lifetime ----------------------------------------------------------------------

    def take_over(self, old: Cluster[P] | None) -> None:
        """Before :meth:`start`: use ``old``'s pools for the hosts both have (their
        connections stay open); ``old`` keeps and later closes the rest."""
        if old is None:
            return
        for key, host in list(self.hosts.items()):
            previous = old.hosts.get(key)
            if previous is None or previous.name != host.name:
                continue
            mine = host.pool
            host.pool = previous.pool
            old._handed_over.add(id(previous.pool))
            self._taken.append((old, previous.pool))
            self._close_pool(mine)
        # The old cluster's names resolved already: no host-name hosts meanwhile.
        for entry, addresses in old._resolved.items():
            if entry in self.entries and entry not in self._resolved:
                self._resolved[entry] = addresses
        self._apply()

    def give_back(self) -> None:
        """Undo :meth:`take_over` (a reload that failed after it): the old cluster owns
        those pools again, and this one closes only its own."""
        for old, pool in self._taken:
            old._handed_over.discard(id(pool))
            self._handed_over.add(id(pool))
        self._taken = []

    def start(self) -> None:
        """Start the resolution and health-check timers."""
        if self._running or self._closed:
            return
        self._running = True
        if any(not _literal(host) for host, _ in self.entries):
            self._resolve()
        if self._probe is not None and self.balancing.health_check is not None:
            for host in self.hosts.values():
                self._schedule_probe(host, first=True)
        self._export_health()

    def close(self) -> Deferred[object]:
        """Stop the timers, close the pools this cluster still owns."""
        self._closed = True
        self._running = False
        if self._resolve_timer is not None and self._resolve_timer.active():
            self._resolve_timer.cancel()
        self._resolve_timer = None
        closing: list[Deferred[None]] = []
        for host in self.all_hosts:
            self._stop_probe(host)
            if id(host.pool) not in self._handed_over:
                closing.append(self._close_pool(host.pool))
        self.draining = []
        if not closing:
            return succeed(None)
        return DeferredList(closing, consumeErrors=True)  # type: ignore[return-value]

    # -- the host set ----------------------------------------------------------------------

    def _wanted(self) -> list[tuple[str, str, int]]:
        wanted: list[tuple[str, str, int]] = []
        for name, port in self.entries:
            for address in self._resolved.get((name, port)) or [name]:
                wanted.append((name, address, port))
        return wanted[:MAX_HOSTS]

    def _apply(self) -> None:
        """Make the hosts what the entries and the last resolutions say."""
        wanted = self._wanted()
        keys = [host_key(address, port) for _, address, port in wanted]
        for (name, address, port), key in zip(wanted, keys, strict=True):
            if key not in self.hosts:
                self.hosts[key] = Host(
                    key=key, name=name, address=address, port=port,
                    pool=self._make_pool(name, address, port),
                    state=HostState(key),
                )
        _, removed = self.balancer.update(keys)
        for key, host in self.hosts.items():
            host.state = self.balancer.hosts.get(key, host.state)
        for key in removed:
            host = self.hosts.pop(key)
            self._stop_probe(host)
            self.log.info("{upstream} host {host} left; draining", upstream=self.name,
                          host=key)
            if host.state.active:
                self.draining.append(host)
            else:
                self._retire(host)
        if self._running and self._probe is not None and self.balancing.health_check:
            for host in self.hosts.values():
                if host._probe_timer is None:
                    self._schedule_probe(host, first=True)

    def _retire(self, host: Host[P]) -> None:
        if host in self.draining:
            self.draining.remove(host)
        if id(host.pool) not in self._handed_over:
            self._close_pool(host.pool)

    # -- DNS -------------------------------------------------------------------------------

    def _resolve(self) -> None:
        self._resolve_timer = None
        resolver = getattr(self.reactor, "nameResolver", None)
        names = [(host, port) for host, port in self.entries if not _literal(host)]
        if resolver is None or not names:
            return
        answers: list[Deferred[list[str]]] = []
        for name, port in names:
            receiver = _Addresses()
            resolver.resolveHostName(receiver, name, port, addressTypes=None,
                                     transportSemantics="TCP")
            answers.append(receiver.done)

        def resolved(results: list[tuple[bool, list[str]]]) -> None:
            if self._closed:
                return
            changed = False
            for (name, port), (ok, found) in zip(names, results, strict=True):
                if ok and found and self._resolved.get((name, port)) != found:
                    self._resolved[(name, port)] = found
                    changed = True
            if changed:
                self._apply()
            self._resolve_timer = self.reactor.callLater(
                self.balancing.resolve_interval, self._resolve
            )

        DeferredList(answers, consumeErrors=True).addCallback(resolved)

    # -- active health checks -------------------------------------------------------------

    def _schedule_probe(self, host: Host[P], *, first: bool = False) -> None:
        check = self.balancing.health_check
        if check is None or self._closed:
            return
        delay = (
            self._rng.uniform(0, check.interval) if first
            else jittered(check.interval, self._rng)
        )
        host._probe_timer = self.reactor.callLater(delay, self._run_probe, host)

    def _stop_probe(self, host: Host[P]) -> None:
        timer = host._probe_timer
        host._probe_timer = None
        if timer is not None and timer.active():
            timer.cancel()

    def _run_probe(self, host: Host[P]) -> None:
        host._probe_timer = None
        check = self.balancing.health_check
        if self._probe is None or check is None or self.hosts.get(host.key) is not host:
            return
        attempt = self._probe(host)
        attempt.addTimeout(check.timeout, self.reactor)

        def done(passed: object) -> None:
            self._checked(host, passed is True)

        attempt.addCallbacks(done, lambda _failure: self._checked(host, False))

    def _checked(self, host: Host[P], passed: bool) -> None:
        if self._closed or self.hosts.get(host.key) is not host:
            return
        was = host.state.state(self.reactor.seconds())
        if self.balancer.checked(host.state, passed=passed):
            now = host.state.state(self.reactor.seconds())
            self.log.info(
                "{upstream} host {host}: {was} -> {now} (active health check)",
                upstream=self.name, host=host.key, was=was, now=now,
            )
            self._export_health()
        self._schedule_probe(host)

    # -- reporting --------------------------------------------------------------------

    def _export_health(self) -> None:
        for host in self.hosts.values():
            metrics.set_upstream_host_health(self.name, host.key, host.state.healthy)

    def snapshot(self) -> dict[str, object]:
        """This upstream's hosts and their state (the admin page's entry)."""
        rows = self.balancer.snapshot(self.reactor.seconds())
        for row in rows:
            host = self.hosts[str(row["host"])]
            row["name"] = host.name
        for host in self.draining:
            rows.append({"host": host.key, "name": host.name, "state": "draining",
                         "active": host.state.active})
        return {
            "balance": self.balancing.balance,
            "health_check": self.balancing.health_check is not None,
            "hosts": rows,
        }

