# -*- test-case-name: tests.test_service -*-
"""The running gateway as a Twisted service: listening ports plus the router.

Shell module.  :func:`gateway_service` turns a :class:`~eventgw.config.GatewayConfig`
into a ``MultiService``.  ``startService`` builds the pieces in dependency order, each
given what it needs when it is made: the listening sockets (bound here, or inherited
from the ``--workers`` supervisor), then the router with its upstream targets, then one
connection factory per port serving that router, then the ports on those sockets.
Binding comes first, so a port in use stops the start as a
:class:`~eventgw.errors.ConfigError` naming the key before any upstream channel or pool
exists.

``stopService`` is the drain (twistd calls it on SIGTERM): the readiness state turns
to draining first, then the ports stop listening, then the open connections get one
drain period (``shutdown.drain_timeout``) for HTTP/1.1 and HTTP/2 alike: HTTP/2 sends
the two-step GOAWAY and lets the open streams finish, HTTP/1.1 answers the request in
flight with ``connection: close`` and closes idle keep-alive connections.  When the
period is over, gRPC calls still open end with UNAVAILABLE and every connection left
is closed; the stop completes as soon as none is left, and then closes the upstream
pools and channels.  :meth:`GatewayService.stop_now` (a second SIGTERM or SIGINT) cuts
every connection at once.

:meth:`GatewayService.reload` (SIGHUP, or a change of the file with ``reload.watch``)
reads and validates the whole file again, as the start does.  A bad file, or one that
changes a listening port or the worker count, changes nothing and is logged in one
line.  A good one builds a new :class:`~eventgw.gateway.Gateway` (new upstream pools),
which every connection routes its *next* request through at once, new TLS handshakes
use the new certificate, and new connections the new limits; exchanges already in
flight finish on the router they started on, which is closed once none is left (at
the latest after one drain period).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IListeningPort
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from eventgw._reactor import default_reactor
from eventgw.admin import metrics
from eventgw.admin.service import admin_service, worker_metrics_service
from eventgw.admin.state import ServingState
from eventgw.config import GatewayConfig
from eventgw.downstream.listener import GatewayFactory
from eventgw.errors import ConfigError
from eventgw.exchange import RequestHandler, RequestHead, ResponseWriter
from eventgw.gateway import Gateway
from eventgw.lifecycle.reload import restart_needed
from eventgw.lifecycle.signals import ParentWatch, StopSignals, stop_reactor
from eventgw.lifecycle.watch import FileWatcher
from eventgw.tls import (
    DevCertificate,
    SwappableServerTLS,
    ensure_dev_certificate,
    server_context_factory,
)
from eventgw.tlsdirect import DirectTLSFactory
from eventgw.workers import bind_listening_socket

__all__ = ["CurrentGateway", "DrainState", "GatewayService", "gateway_service"]

# After the drain period, the connections asked to close (gRPC calls ended with
# UNAVAILABLE) get this long to flush that before they are cut.
CUT_GRACE = 1.0
# How often a router a reload replaced is checked for work still in flight.
RETIRE_POLL = 0.5


class DrainState(Protocol):
    """The readiness state the service reports a drain to (``/readyz``)."""

    draining: bool

    def start_draining(self) -> None: ...


class CurrentGateway:
    """The target every connection routes through: whichever router is current.

    A reload replaces :attr:`gateway`; the next request of every connection, old or new,
    goes to the new one, while exchanges already started stay with the old one.
    """

    __slots__ = ("gateway",)

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        return self.gateway.start_exchange(head, writer)


class GatewayService(service.Service):
    """Owns the router, the listening ports and the open connections.

    :ivar ports: the listening ports once started, TLS first.
    :ivar factories: the connection factory of each port, in the same order.
    :ivar gateway: the current router while the service runs.
    :ivar dev_certificate: the generated development certificate, when no
        ``tls.cert``/``tls.key`` is configured (set by :meth:`prepare`).
    :ivar drain_timeout: how long in-flight work may run after ``stopService`` before
        it is ended (``shutdown.drain_timeout``, unless given to the constructor).
    :ivar draining: whether the drain has begun (when no ``state`` was given; with one,
        its ``draining``).
    :ivar reloads_succeeded: configurations applied, the one of the start included.
    :ivar reloads_failed: reloads refused (a bad file, a port or worker count changed).
    :ivar last_reload_success: the reactor time the current configuration was applied.
    """

    log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any = None,
        adopt_fds: list[int] | None = None,
        *,
        drain_timeout: float | None = None,
        state: ServingState | None = None,
        on_reload: Callable[[bool], object] | None = None,
        loader: Callable[[], GatewayConfig] | None = None,
        watch_path: str | None = None,
        handle_signals: bool = False,
        parent_pid: int | None = None,
    ) -> None:
        """
        :param state: told ``start_draining()`` at the first moment of a drain.
        :param on_reload: called with ``True``/``False`` after every reload.
        :param loader: reads and checks the configuration again (a reload); raises
            :class:`~eventgw.errors.ConfigError` naming the key.
        :param watch_path: the file ``reload.watch`` watches (``None``: nobody here does).
        :param handle_signals: install the SIGTERM/SIGINT/SIGHUP handlers
            (:class:`~eventgw.lifecycle.signals.StopSignals`) when the service
            starts, before the ports are announced, and again once the reactor runs.
        :param parent_pid: a worker's supervisor: its death starts the drain.
        """
        reactor = default_reactor(reactor)
        # Serving or draining: what the admin listener's readiness reports.
        self.state = state if state is not None else ServingState()
        self.state.upstreams = self._upstreams
        self.config = config
        self.reactor = reactor
        self._fixed_drain_timeout = drain_timeout
        self.drain_timeout = config.drain_timeout if drain_timeout is None else drain_timeout
        self.ports: list[IListeningPort] = []
        self.factories: list[GatewayFactory] = []
        self.gateway: Gateway | None = None
        self.dev_certificate: DevCertificate | None = None
        self._tls_options: CertificateOptions | None = None
        # With --workers, listening sockets are inherited from the supervisor.
        self.adopt_fds = adopt_fds
        self._draining = False
        self.on_reload = on_reload
        self.loader = loader
        self.watch_path = watch_path
        self.handle_signals = handle_signals
        self.parent_pid = parent_pid
        self.reloads_succeeded = 0
        self.reloads_failed = 0
        self.last_reload_success = 0.0
        self.signals: StopSignals | None = None
        self._target: CurrentGateway | None = None
        self._server_tls: SwappableServerTLS | None = None
        self._watcher: FileWatcher | None = None
        self._parent_watch: ParentWatch | None = None
        self._retiring: dict[Gateway, LoopingCall] = {}
        self._draining_factories: list[GatewayFactory] = []
        self._drain_calls: list[IDelayedCall] = []

    @property
    def draining(self) -> bool:
        return self.state.draining if self.state is not None else self._draining

    def prepare(self) -> CertificateOptions:
        """Load (or generate) the certificate; raises ConfigError naming the key."""
        if self._tls_options is None:
            self._tls_options = self._context_factory(self.config)
            self._record_certificate(self.config)
        return self._tls_options

    def _record_certificate(self, config: GatewayConfig) -> None:
        # The served certificate's notAfter, for the metrics.
        dev = self.dev_certificate
        metrics.record_certificate(dev.cert_path if dev else config.tls.cert or "")

    def _context_factory(self, config: GatewayConfig) -> CertificateOptions:
        tls = config.tls
        if tls.cert is not None and tls.key is not None:
            return server_context_factory(tls.cert, tls.key, config.auth.client_certificates)
        dev = ensure_dev_certificate(tls.dev_cert_dir)
        self.dev_certificate = dev
        self.log.warn(
            "NO tls.cert/tls.key CONFIGURED: serving a self-signed DEVELOPMENT certificate "
            "({state} {cert_path}, SHA-256 fingerprint {fingerprint}). Do not use it in "
            "production.",
            state="created" if dev.created else "reusing",
            cert_path=dev.cert_path,
            fingerprint=dev.fingerprint,
        )
        return server_context_factory(
            dev.cert_path, dev.key_path, config.auth.client_certificates
        )

    def _listening_sockets(self) -> list[tuple[int, socket.socket | None]]:
        """One listening file descriptor per port, TLS first, with the socket object
        when it was bound here (closed once the port has adopted a copy).  A port that
        cannot be bound raises ConfigError naming its key."""
        listen = self.config.listen
        if self.adopt_fds is not None:
            count = 1 if listen.cleartext is None else 2
            return [(fd, None) for fd in self.adopt_fds[:count]]
        wanted = [(listen.tls, "listen.tls")]
        if listen.cleartext is not None:
            wanted.append((listen.cleartext, "listen.cleartext"))
        bound: list[tuple[int, socket.socket | None]] = []
        try:
            for port, key in wanted:
                sock = bind_listening_socket(listen.interface, port, key)
                bound.append((sock.fileno(), sock))
        except BaseException:
            _close_sockets(bound)
            raise
        return bound

    def startService(self) -> None:
        tls_options = self.prepare()
        config = self.config
        sockets = self._listening_sockets()
        try:
            gateway = Gateway.from_config(config, self.reactor)
            target = CurrentGateway(gateway)
            factories = [
                GatewayFactory(
                    target,
                    config.limits,
                    tls=index == 0,
                    reactor=self.reactor,
                    access_log=config.access_log,
                )
                for index in range(len(sockets))
            ]
            server_tls = SwappableServerTLS(tls_options)
            ports = self._adopt(sockets, factories, server_tls, gateway)
        finally:
            # Each port listens on its own duplicate of the descriptor.
            _close_sockets(sockets)
        self.gateway = gateway
        self._target = target
        self._server_tls = server_tls
        self.factories = factories
        self.ports = ports
        service.Service.startService(self)
        # Metrics: the label bound, and the initial load as the first successful reload.
        metrics.configure(config.metrics.max_methods, enabled=config.metrics.enabled)
        metrics.record_reload(True, self.reactor.seconds())
        self.reloads_succeeded = 1
        self.last_reload_success = self.reactor.seconds()
        if self.handle_signals:
            # Before the ports are announced: a SIGHUP right after the announcement
            # must reload, not kill the process.
            self._install_signals()
        self._log_startup()
        self._watch(config)
        if self.parent_pid is not None:
            self._parent_watch = ParentWatch(self.parent_pid, self.begin_drain, self.reactor)
            self._parent_watch.start()

    def _upstreams(self) -> dict[str, object]:
        """The current router's upstreams (the admin listener's ``/upstreams``)."""
        gateway = self.gateway
        return {} if gateway is None else gateway.upstreams()

    def _install_signals(self) -> None:
        """Our handlers now, and again once the reactor runs (after its own SIGTERM and
        SIGINT handlers)."""
        self.signals = StopSignals(
            self.reactor,
            on_drain=self.begin_drain,
            on_stop_now=self.stop_now,
            on_reload=self.reload,
        )
        self.signals.install()
        self.reactor.callWhenRunning(self.signals.install)

    def _adopt(
        self,
        sockets: list[tuple[int, socket.socket | None]],
        factories: list[GatewayFactory],
        server_tls: SwappableServerTLS,
        gateway: Gateway,
    ) -> list[IListeningPort]:
        """A listening port per socket, serving its factory (behind TLS for the first)."""
        family = socket.AF_INET6 if ":" in self.config.listen.interface else socket.AF_INET
        ports: list[IListeningPort] = []
        try:
            for (fd, _), factory in zip(sockets, factories, strict=True):
                wrapped: Any = factory
                if factory.tls:
                    wrapped = DirectTLSFactory(server_tls, False, factory)
                ports.append(self.reactor.adoptStreamPort(fd, family, wrapped))
        except BaseException:
            for port in ports:
                port.stopListening()
            gateway.close()
            raise
        return ports

    def _log_startup(self) -> None:
        kinds = ["TLS (ALPN h2, http/1.1)", "cleartext (HTTP/1.1, h2c prior knowledge)"]
        for port, kind in zip(self.ports, kinds, strict=False):
            address = port.getHost()
            self.log.info(
                "eventgw listening on {host}:{port} {kind}",
                host=address.host,  # type: ignore[attr-defined]
                port=address.port,  # type: ignore[attr-defined]
                kind=kind,
            )
        self._log_routes()

    def _log_routes(self) -> None:
        config = self.config
        api = config.master_api_http
        grpc = config.master_api_grpc
        broker = config.event_broker
        self.log.info(
            "routes: /api -> {api}; gRPC -> {grpc} (allow {allow}, deny {deny}); "
            "/events -> {broker}",
            api=api.url if api else "(none: 503)",
            grpc=("grpcs://" if grpc and grpc.tls else "") + grpc.address if grpc else "(none)",
            allow=list(config.grpc_allow),
            deny=list(config.grpc_deny),
            broker=broker.target if broker else "(none: 503)",
        )

    # --- reload -------------------------------------------------------------------

    def _watch(self, config: GatewayConfig) -> None:
        """Start or stop the file watcher as ``reload.watch`` says."""
        wanted = config.reload_watch and self.watch_path is not None and self.running
        if wanted and self._watcher is None:
            assert self.watch_path is not None
            self._watcher = FileWatcher(self.watch_path, self._file_changed, self.reactor)
            self._watcher.start()
            self.log.info("watching {path} for changes", path=self.watch_path)
        elif not wanted and self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    def _file_changed(self) -> None:
        self.log.info("{path} changed: reloading the configuration", path=self.watch_path)
        self.reload()

    def reload(self) -> bool:
        """Read, check and apply the configuration again; whether it was applied.

        Nothing is applied unless everything is good: a bad file is one error line
        naming the key, a changed port or worker count one line saying a restart is
        needed; either way the old configuration keeps serving and the failure counts.
        """
        if not self.running or self.draining:
            self.log.info("reload ignored: the gateway is draining")
            return False
        if self._watcher is not None:
            self._watcher.seen()
        try:
            if self.loader is None:
                raise ConfigError("--config", "no configuration file to reload")
            new = self.loader()
            needed = restart_needed(self.config, new)
            if needed is not None:
                self.log.error(
                    "configuration reload refused, nothing applied: {changes} "
                    "(a restart is needed for that)",
                    changes=needed,
                )
                return self._reloaded(False)
            tls_options = self._context_factory(new)
            gateway = Gateway.from_config(new, self.reactor, previous=self.gateway)
        except ConfigError as e:
            self.log.error(
                "configuration reload failed, still serving the previous one: {error}",
                error=str(e),
            )
            return self._reloaded(False)
        except Exception as e:  # building the new router's clients failed
            self.log.error(
                "configuration reload failed, still serving the previous one: {error!r}",
                error=e,
            )
            return self._reloaded(False)
        self._apply(new, tls_options, gateway)
        self.log.info("configuration reloaded from {source}", source=new.source)
        self._log_routes()
        return self._reloaded(True)

    def _apply(
        self, config: GatewayConfig, tls_options: CertificateOptions, gateway: Gateway
    ) -> None:
        assert self._target is not None and self._server_tls is not None
        old = self._target.gateway
        self._target.gateway = gateway
        self.gateway = gateway
        for factory in self.factories:
            factory.limits = config.limits
            factory.access_log = config.access_log
        self._server_tls.options = tls_options
        self._tls_options = tls_options
        self.config = config
        self._record_certificate(config)
        metrics.configure(config.metrics.max_methods, enabled=config.metrics.enabled)
        if self._fixed_drain_timeout is None:
            self.drain_timeout = config.drain_timeout
        self._watch(config)
        self._retire(old)

    def _reloaded(self, success: bool) -> bool:
        if success:
            self.reloads_succeeded += 1
            self.last_reload_success = self.reactor.seconds()
        else:
            self.reloads_failed += 1
        metrics.record_reload(success, self.reactor.seconds())
        if self.on_reload is not None:
            self.on_reload(success)
        return success

    def _retire(self, gateway: Gateway) -> None:
        """Close a replaced router once its work in flight is done (at the latest after
        one drain period)."""
        deadline = self.reactor.seconds() + self.drain_timeout

        def check() -> None:
            if gateway.busy() and self.reactor.seconds() < deadline:
                return
            self._close_retired(gateway)

        loop = LoopingCall(check)
        loop.clock = self.reactor
        self._retiring[gateway] = loop
        loop.start(RETIRE_POLL, now=True)

    def _close_retired(self, gateway: Gateway) -> defer.Deferred[object]:
        loop = self._retiring.pop(gateway, None)
        if loop is not None and loop.running:
            loop.stop()
        return gateway.close()

    # --- drain --------------------------------------------------------------------

    def begin_drain(self) -> None:
        """Start the drain: readiness turns to draining now, then the reactor stops
        (which stops the service: :meth:`stopService`)."""
        self._mark_draining()
        stop_reactor(self.reactor)

    def _mark_draining(self) -> None:
        if self._draining:
            return
        self._draining = True
        if self.state is not None:
            self.state.start_draining()

    def stop_now(self) -> None:
        """Cut every connection now (a second SIGTERM or SIGINT): the stop completes
        without waiting for the drain period."""
        self._mark_draining()
        for factory in self.factories + self._draining_factories:
            factory.abort_connections()
        stop_reactor(self.reactor)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self._mark_draining()
        service.Service.stopService(self)
        for watch in (self._watcher, self._parent_watch):
            if watch is not None:
                watch.stop()
        self._watcher = self._parent_watch = None
        ports, self.ports = self.ports, []
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        factories, self.factories = self.factories, []
        gateway, self.gateway = self.gateway, None
        open_connections = sum(len(factory.connections) for factory in factories)
        if open_connections:
            self.log.info(
                "draining: ports closed, {connections} open connections get up to "
                "{timeout}s to finish",
                connections=open_connections,
                timeout=self.drain_timeout,
            )
        self._draining_factories = factories
        yield self._drain(factories)
        self._draining_factories = []
        closing = [self._close_retired(old) for old in list(self._retiring)]
        if gateway is not None:
            closing.append(gateway.close())
        yield defer.DeferredList(closing, consumeErrors=True)
        if open_connections:
            self.log.info("drained: every connection is closed")

    def _drain(self, factories: list[GatewayFactory]) -> defer.Deferred[None]:
        """Give every open connection one drain period, then end what is left (gRPC
        calls with UNAVAILABLE) and, after a short grace, cut those still open; fires
        when none is left."""
        period = self.drain_timeout
        closed = defer.gatherResults([factory.drain(period) for factory in factories])

        def cut() -> None:
            for factory in factories:
                factory.abort_connections()

        def expire() -> None:
            left = sum(len(factory.connections) for factory in factories)
            if left:
                self.log.warn(
                    "drain timeout ({timeout}s): ending {connections} connections still "
                    "open",
                    timeout=period,
                    connections=left,
                )
            for factory in factories:
                factory.expire_connections()
            self._drain_calls.append(self.reactor.callLater(CUT_GRACE, cut))

        self._drain_calls = [self.reactor.callLater(period, expire)]

        def done(_: object) -> None:
            for call in self._drain_calls:
                if call.active():
                    call.cancel()
            self._drain_calls = []

        return closed.addCallback(done)


def _close_sockets(sockets: list[tuple[int, socket.socket | None]]) -> None:
    for _, sock in sockets:
        if sock is not None:
            sock.close()


def gateway_service(
    config: GatewayConfig,
    reactor: Any = None,
    adopt_fds: list[int] | None = None,
    *,
    admin: bool = True,
    **options: Any,
) -> service.MultiService:
    """The whole gateway as one ``MultiService`` (what ``twistd eventgw`` runs);
    ``options`` are :class:`GatewayService`'s keywords.

    With ``admin`` (not in a ``--workers`` worker: there the supervisor serves it) and
    ``admin.listen`` configured, the admin listener is a second child.
    """
    top = service.MultiService()
    state = ServingState()
    GatewayService(config, reactor, adopt_fds, state=state, **options).setServiceParent(top)  # type: ignore[no-untyped-call]
    # The admin listener (health, readiness, metrics): eventgw.admin.  A worker flushes
    # its metrics to the files its supervisor's admin listener reads.
    listener = admin_service(config, state, reactor) if admin else worker_metrics_service(reactor)
    if listener is not None:
        listener.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
