# -*- test-case-name: tests.test_admin -*-
"""The admin listener as a Twisted service.

Shell module.  :func:`admin_service` makes it from ``admin.listen`` (``None`` when the
key is not set): a cleartext port that speaks HTTP/1.1 and h2c, served by the
gateway's own downstream protocols with :class:`~eventgw.admin.target.AdminTarget` as
their target and no access log.

It outlives the drain.  ``stopService`` (the first moment of a shutdown) only tells the
:class:`~eventgw.admin.state.ServingState` that the drain has begun -- readiness turns
503 and gRPC health NOT_SERVING at once -- and keeps the port open; it is closed when
the reactor shuts down, after every service's drain is over, so probes and scrapes are
answered until the process exits.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from eventgw._reactor import default_reactor
from eventgw.admin.metrics import flush, prepare_multiprocess
from eventgw.admin.state import ServingState
from eventgw.admin.target import AdminTarget
from eventgw.config import GatewayConfig, Limits
from eventgw.downstream.listener import GatewayFactory
from eventgw.errors import ConfigError

__all__ = [
    "AdminService",
    "MetricsFlushService",
    "admin_service",
    "supervisor_admin_service",
    "worker_metrics_service",
]

#: How often a ``--workers`` worker adds its recorded counts to its metrics files.
FLUSH_INTERVAL: float = 1.0


class AdminService(service.Service):
    """The admin port: up from ``startService`` until the reactor shuts down.

    :ivar port: the listening port while open.
    :ivar factory: its connection factory.
    """

    log = Logger()

    def __init__(
        self, host: str, port: int, state: ServingState, reactor: Any = None
    ) -> None:
        self.host = host
        self.port_number = port
        self.state = state
        self.reactor = default_reactor(reactor)
        self.target = AdminTarget(state)
        self.factory = GatewayFactory(
            self.target, Limits(), tls=False, reactor=self.reactor, access_log=False,
            listener="admin",
        )
        self.port: IListeningPort | None = None
        self._close_trigger: Any = None

    def prepare(self) -> None:
        """Check that the address can be bound (ConfigError naming ``admin.listen``),
        before twistd daemonizes."""
        from eventgw.workers import check_port_free

        if self.port_number:
            check_port_free(self.host, self.port_number, "admin.listen")

    def startService(self) -> None:
        try:
            self.port = self.reactor.listenTCP(
                self.port_number, self.factory, interface=self.host
            )
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise ConfigError(
                "admin.listen", f"cannot listen on {self.host}:{self.port_number}: {reason}"
            ) from None
        service.Service.startService(self)
        address = self.port.getHost()
        self.log.info(
            "eventgw admin listener on {host}:{port} (HTTP/1.1, h2c): /healthz /readyz "
            "/metrics grpc.health.v1.Health",
            host=address.host,  # type: ignore[union-attr]
            port=address.port,  # type: ignore[union-attr]
        )

    def stopService(self) -> None:
        service.Service.stopService(self)
        self.state.start_draining()
        if self.port is not None and self._close_trigger is None:
            self._close_trigger = self.reactor.addSystemEventTrigger(
                "during", "shutdown", self.close
            )

    def close(self) -> Any:
        """Stop listening and cut the open admin connections (idempotent)."""
        if self._close_trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._close_trigger)
            except (ValueError, KeyError):
                pass  # it is the one running now
            self._close_trigger = None
        port, self.port = self.port, None
        self.factory.abort_connections()
        if port is None:
            return None
        return port.stopListening()


def admin_service(
    config: GatewayConfig, state: ServingState, reactor: Any = None
) -> AdminService | None:
    """The admin listener of ``admin.listen``, or None when none is configured."""
    admin = config.admin
    if admin is None:
        return None
    return AdminService(admin.host, admin.port, state, reactor)


def supervisor_admin_service(config: GatewayConfig, parent: service.MultiService) -> None:
    """With ``--workers``: the workers' metrics go to a fresh multiprocess directory
    (:func:`~eventgw.admin.metrics.prepare_multiprocess`), and the supervisor's admin
    listener, when configured, serves their sum (its readiness turns 503 when the
    supervisor starts draining the workers)."""
    prepare_multiprocess()
    admin = admin_service(config, ServingState())
    if admin is not None:
        admin.prepare()
        admin.setServiceParent(parent)  # type: ignore[no-untyped-call]


class MetricsFlushService(service.Service):
    """In a ``--workers`` worker: the counts recorded on the hot path go to the
    worker's memory-mapped metrics files every :data:`FLUSH_INTERVAL` seconds (the
    supervisor's scrape reads those files), and once more when the worker stops."""

    def __init__(self, reactor: Any = None, interval: float = FLUSH_INTERVAL) -> None:
        self.reactor = default_reactor(reactor)
        self.interval = interval
        self._call: Any = None

    def prepare(self) -> None:
        """Nothing to load before the start (the other children load their files)."""

    def startService(self) -> None:
        service.Service.startService(self)
        self._call = self.reactor.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._call = self.reactor.callLater(self.interval, self._tick)
        flush()

    def stopService(self) -> Any:
        # Counting goes on through the drain: flush at every tick until the reactor
        # stops, and once more then.
        self.reactor.addSystemEventTrigger("after", "shutdown", self._last)
        return service.Service.stopService(self)

    def _last(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        flush()


def worker_metrics_service(reactor: Any = None) -> MetricsFlushService:
    """What a ``--workers`` worker runs beside its gateway for the metrics."""
    return MetricsFlushService(reactor)
