# -*- test-case-name: tests.test_service -*-
"""The running gateway as a Twisted service: listening ports plus the router.

Shell module.  :func:`gateway_service` turns a :class:`~eventgw.config.GatewayConfig`
into a ``MultiService``.  Ports bind in ``startService``; a port in use surfaces there
as a :class:`~eventgw.errors.ConfigError` naming the key.  ``stopService`` stops
accepting, asks open connections to drain (HTTP/2 GOAWAY, HTTP/1.1 close when idle),
and closes the upstream pools and channels.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from eventgw._reactor import default_reactor
from eventgw.config import GatewayConfig
from eventgw.downstream.listener import GatewayFactory
from eventgw.errors import ConfigError
from eventgw.gateway import Gateway
from eventgw.tls import ensure_dev_certificate, server_context_factory

__all__ = ["GatewayService", "gateway_service"]

# How long stopService waits for in-flight exchanges before closing connections.
DRAIN_GRACE_SECONDS = 10.0


class GatewayService(service.Service):
    """Owns the router, the listening ports and the open connections.

    :ivar ports: the listening ports once started, TLS first.
    """

    log = Logger()

    def __init__(
        self, config: GatewayConfig, reactor: Any = None, adopt_fds: list[int] | None = None
    ) -> None:
        reactor = default_reactor(reactor)
        self.config = config
        self.reactor = reactor
        self.ports: list[IListeningPort] = []
        self.factories: list[GatewayFactory] = []
        self.gateway: Any = None
        self.dev_certificate: Any = None
        self._tls_options: Any = None
        # With --workers, listening sockets are inherited from the supervisor.
        self.adopt_fds = adopt_fds

    def prepare(self) -> None:
        """Load (or generate) the certificate; raises ConfigError naming the key."""
        if self._tls_options is None:
            self._tls_options = self._context_factory()

    def _context_factory(self) -> Any:
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

    def _listen(self, factory: GatewayFactory, port: int, key: str, tls_options: Any) -> None:
        interface = self.config.listen.interface
        if self.adopt_fds is not None:
            self._adopt(factory, self.adopt_fds[len(self.ports)], tls_options)
            return
        endpoint: Any
        if tls_options is not None:
            endpoint = SSL4ServerEndpoint(self.reactor, port, tls_options, interface=interface)
        elif ":" in interface:
            endpoint = TCP6ServerEndpoint(self.reactor, port, interface=interface)
        else:
            endpoint = TCP4ServerEndpoint(self.reactor, port, interface=interface)
        d = endpoint.listen(factory)
        result: list[Any] = []
        d.addBoth(result.append)
        value = result[0]
        if IListeningPort.providedBy(value):
            self.ports.append(value)
            self.factories.append(factory)
            return
        error = value.value
        if isinstance(error, CannotListenError):
            reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
            raise ConfigError(key, f"cannot listen on {interface}:{port}: {reason}")
        value.raiseException()

    def _adopt(self, factory: GatewayFactory, fd: int, tls_options: Any) -> None:
        import socket

        from twisted.protocols.tls import TLSMemoryBIOFactory

        family = socket.AF_INET6 if ":" in self.config.listen.interface else socket.AF_INET
        wrapped: Any = factory
        if tls_options is not None:
            wrapped = TLSMemoryBIOFactory(tls_options, False, factory)
        self.ports.append(self.reactor.adoptStreamPort(fd, family, wrapped))
        self.factories.append(factory)

    def startService(self) -> None:
        self.prepare()
        access = self.config.access_log
        limits = self.config.limits
        # Bind first: a port in use must stop the start before any upstream
        # channel or pool exists.  The router is attached to the factories after.
        tls_factory = GatewayFactory(
            None, limits, tls=True, reactor=self.reactor, access_log=access  # type: ignore[arg-type]
        )
        clear_factory = GatewayFactory(
            None, limits, tls=False, reactor=self.reactor, access_log=access  # type: ignore[arg-type]
        )
        try:
            self._listen(tls_factory, self.config.listen.tls, "listen.tls", self._tls_options)
            if self.config.listen.cleartext is not None:
                self._listen(
                    clear_factory, self.config.listen.cleartext, "listen.cleartext", None
                )
        except BaseException:
            for port in self.ports:
                port.stopListening()
            self.ports = []
            self.factories = []
            raise
        self.gateway = Gateway(self.config, self.reactor)
        for factory in self.factories:
            factory.target = self.gateway
        service.Service.startService(self)
        self._log_startup()

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
        service.Service.stopService(self)
        ports, self.ports = self.ports, []
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        for factory in self.factories:
            for connection in list(factory.connections):
                connection.drain()
        waited = 0.0
        while any(f.connections for f in self.factories) and waited < DRAIN_GRACE_SECONDS:
            yield _sleep(self.reactor, 0.05)
            waited += 0.05
        for factory in self.factories:
            for connection in list(factory.connections):
                if connection.transport is not None:
                    connection.transport.abortConnection()  # type: ignore[attr-defined]
        self.factories = []
        if self.gateway is not None:
            yield self.gateway.close()


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def gateway_service(
    config: GatewayConfig, reactor: Any = None, adopt_fds: list[int] | None = None
) -> service.MultiService:
    """The whole gateway as one ``MultiService`` (what ``twistd eventgw`` runs)."""
    top = service.MultiService()
    GatewayService(config, reactor, adopt_fds).setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
