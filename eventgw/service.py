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

``stopService`` stops accepting, then gives the open connections one drain period
(``drain_timeout``, :data:`~eventgw.http2.DRAIN_TIMEOUT` by default) for HTTP/1.1 and
HTTP/2 alike: HTTP/2 sends GOAWAY and lets the open streams finish, HTTP/1.1 answers
the request in flight with ``connection: close``.  Connections still open when the
period is over are cut; the stop completes as soon as none is left, and then closes
the upstream pools and channels.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from eventgw._reactor import default_reactor
from eventgw.admin import metrics
from eventgw.admin.service import admin_service, worker_metrics_service
from eventgw.admin.state import ServingState
from eventgw.config import GatewayConfig
from eventgw.downstream.listener import GatewayFactory
from eventgw.gateway import Gateway
from eventgw.http2 import DRAIN_TIMEOUT
from eventgw.tls import DevCertificate, ensure_dev_certificate, server_context_factory
from eventgw.workers import bind_listening_socket

__all__ = ["GatewayService", "gateway_service"]


class GatewayService(service.Service):
    """Owns the router, the listening ports and the open connections.

    :ivar ports: the listening ports once started, TLS first.
    :ivar factories: the connection factory of each port, in the same order.
    :ivar gateway: the router while the service runs.
    :ivar dev_certificate: the generated development certificate, when no
        ``tls.cert``/``tls.key`` is configured (set by :meth:`prepare`).
    :ivar drain_timeout: how long in-flight work may run after ``stopService`` before
        its connection is cut.
    """

    log = Logger()

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any = None,
        adopt_fds: list[int] | None = None,
        *,
        drain_timeout: float = DRAIN_TIMEOUT,
        state: ServingState | None = None,
    ) -> None:
        reactor = default_reactor(reactor)
        # Serving or draining: what the admin listener's readiness reports.
        self.state = state if state is not None else ServingState()
        self.config = config
        self.reactor = reactor
        self.drain_timeout = drain_timeout
        self.ports: list[IListeningPort] = []
        self.factories: list[GatewayFactory] = []
        self.gateway: Gateway | None = None
        self.dev_certificate: DevCertificate | None = None
        self._tls_options: CertificateOptions | None = None
        # With --workers, listening sockets are inherited from the supervisor.
        self.adopt_fds = adopt_fds

    def prepare(self) -> CertificateOptions:
        """Load (or generate) the certificate; raises ConfigError naming the key."""
        if self._tls_options is None:
            self._tls_options = self._context_factory()
            # The served certificate's notAfter, for the metrics.
            dev = self.dev_certificate
            metrics.record_certificate(dev.cert_path if dev else self.config.tls.cert or "")
        return self._tls_options

    def _context_factory(self) -> CertificateOptions:
        tls = self.config.tls
        if tls.cert is not None and tls.key is not None:
            return server_context_factory(tls.cert, tls.key)
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
        return server_context_factory(dev.cert_path, dev.key_path)

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
            factories = [
                GatewayFactory(
                    gateway,
                    config.limits,
                    tls=index == 0,
                    reactor=self.reactor,
                    access_log=config.access_log,
                )
                for index in range(len(sockets))
            ]
            ports = self._adopt(sockets, factories, tls_options, gateway)
        finally:
            # Each port listens on its own duplicate of the descriptor.
            _close_sockets(sockets)
        self.gateway = gateway
        self.factories = factories
        self.ports = ports
        service.Service.startService(self)
        # Metrics: the label bound, and the initial load as the first successful reload.
        metrics.configure(config.metrics.max_methods)
        metrics.record_reload(True, self.reactor.seconds())
        self._log_startup()

    def _adopt(
        self,
        sockets: list[tuple[int, socket.socket | None]],
        factories: list[GatewayFactory],
        tls_options: CertificateOptions,
        gateway: Gateway,
    ) -> list[IListeningPort]:
        """A listening port per socket, serving its factory (behind TLS for the first)."""
        family = socket.AF_INET6 if ":" in self.config.listen.interface else socket.AF_INET
        ports: list[IListeningPort] = []
        try:
            for (fd, _), factory in zip(sockets, factories, strict=True):
                wrapped: Any = factory
                if factory.tls:
                    wrapped = TLSMemoryBIOFactory(tls_options, False, factory)
                ports.append(self.reactor.adoptStreamPort(fd, family, wrapped))
        except BaseException:
            for port in ports:
                port.stopListening()
            gateway.close()
            raise
        return ports

    def _log_startup(self) -> None:
        config = self.config
        kinds = ["TLS (ALPN h2, http/1.1)", "cleartext (HTTP/1.1, h2c prior knowledge)"]
        for port, kind in zip(self.ports, kinds, strict=False):
            address = port.getHost()
            self.log.info(
                "eventgw listening on {host}:{port} {kind}",
                host=address.host,  # type: ignore[attr-defined]
                port=address.port,  # type: ignore[attr-defined]
                kind=kind,
            )
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

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self.state.start_draining()
        service.Service.stopService(self)
        ports, self.ports = self.ports, []
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        factories, self.factories = self.factories, []
        gateway, self.gateway = self.gateway, None
        yield self._drain(factories)
        if gateway is not None:
            yield gateway.close()

    def _drain(self, factories: list[GatewayFactory]) -> defer.Deferred[None]:
        """Give every open connection one drain period, then cut those still open;
        fires when none is left."""
        period = self.drain_timeout
        closed = defer.gatherResults([factory.drain(period) for factory in factories])

        def cut() -> None:
            for factory in factories:
                factory.abort_connections()

        deadline = self.reactor.callLater(period, cut)

        def done(_: object) -> None:
            if deadline.active():
                deadline.cancel()

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
) -> service.MultiService:
    """The whole gateway as one ``MultiService`` (what ``twistd eventgw`` runs).

    With ``admin`` (not in a ``--workers`` worker: there the supervisor serves it) and
    ``admin.listen`` configured, the admin listener is a second child.
    """
    top = service.MultiService()
    state = ServingState()
    GatewayService(config, reactor, adopt_fds, state=state).setServiceParent(top)  # type: ignore[no-untyped-call]
    # The admin listener (health, readiness, metrics): eventgw.admin.  A worker flushes
    # its metrics to the files its supervisor's admin listener reads.
    listener = admin_service(config, state, reactor) if admin else worker_metrics_service(reactor)
    if listener is not None:
        listener.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
