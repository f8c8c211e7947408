# -*- test-case-name: tests.test_tap -*-
"""``twistd eventgw``: command-line options and ``makeService`` (Twisted's tap convention).

Shell module.  The YAML file named by ``--config`` is the primary interface; the
flags override single keys.  A bad configuration ends the start with one line on
stderr naming the key or file, and exit status 1, instead of a traceback.

Everything that can make a start fail is found before twistd daemonizes, while the
process still has its terminal: the file in :meth:`Options.postOptions`, then in
:func:`makeService` the certificate, the CA bundles and the Event Broker's routes
(:func:`check_config`) and the listening ports, bound there and handed to the service
as sockets to adopt.  Without ``-n`` twistd forks before it starts the service, and a
failure in the child would be written where nobody looks, while the parent, waiting
for the child's word, would wait forever.  ``--check`` runs the same checks but binds
nothing, prints ``configuration ok`` and exits.

The running process drains on SIGTERM (exit status 0) and reloads the file on SIGHUP
and, with ``reload.watch``, when it changes (:mod:`eventgw.lifecycle`); a reload reads
the file with the same flags and runs the same checks as the start.  A ``--workers``
child (started by the supervisor, which names it in its environment) leaves signals sent to
the supervisor's process group to the supervisor, tags its log lines with its index,
and drains when the supervisor is gone.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application import service
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from eventgw import __version__
from eventgw.config import GatewayConfig, Override, load_config, load_config_file
from eventgw.errors import ConfigError

__all__ = ["Options", "StartFailed", "check_config", "makeService"]


class StartFailed(Exception):
    """A start failure in a daemonized child: an ordinary exception, so that twistd
    reports it to the parent waiting on the terminal (which then exits 1)."""


def _fail(error: ConfigError) -> NoReturn:
    # Once twistd has started logging, sys.stderr is redirected into the log; the
    # one line must still reach the terminal that started us.
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"eventgw: bad configuration: {error}\n")
    stream.flush()
    raise SystemExit(1)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise usage.UsageError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"not a port number: {value!r}")
    return port


class Options(usage.Options):
    """Options of ``twistd eventgw``."""

    synopsis = "[options]"
    longdesc = (
        "Run eventgw: one TLS port (ALPN h2 and http/1.1) in front of a Master API "
        "(HTTP /api and gRPC) and an Event Broker (/events, CloudEvents over gRPC). "
        "Configuration comes from the YAML file given with --config; the other flags "
        "override single keys of it."
    )
    optParameters: list[Any] = [
        ["config", "c", None, "YAML configuration file (see README: configuration)."],
        ["port", "p", None, "TLS port, ALPN h2 + http/1.1 (listen.tls; default 9001).", _port],
        ["cleartext-port", None, None,
         "Cleartext port, HTTP/1.1 + h2c prior knowledge (listen.cleartext).", _port],
        ["interface", None, None, "Address to bind (listen.interface; default 0.0.0.0)."],
        ["master-api-http", None, None, "Master API HTTP base URL (master_api.http)."],
        ["master-api-grpc", None, None,
         "Master API gRPC address host:port or grpcs://host:port (master_api.grpc)."],
        ["event-broker-grpc", None, None,
         "Event Broker gRPC address host:port or grpcs://host:port (event_broker.grpc)."],
        ["workers", "w", None, "Number of worker processes sharing the ports (workers).", int],
        ["adopt-fds", None, None,
         "Internal: serve on inherited listening sockets (TLS[,cleartext] fd numbers); "
         "used by the --workers supervisor."],
    ]
    optFlags: list[Any] = [
        ["no-access-log", None, "Do not log one line per request (log.access: false)."],
        ["check", None,
         "Validate the configuration (keys, certificates, CA bundles, routes) without "
         "binding or connecting; print 'configuration ok' and exit 0, or the error and "
         "exit 1."],
    ]

    def opt_version(self) -> NoReturn:
        """Print the eventgw version and exit."""
        print(f"eventgw {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        self.raw_args = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)  # type: ignore[no-untyped-call]

    def postOptions(self) -> None:
        fds = self["adopt-fds"]
        if fds is not None:
            try:
                self["adopt_fds"] = [int(fd) for fd in fds.split(",")]
            except ValueError:
                raise usage.UsageError(f"--adopt-fds: not fd numbers: {fds!r}") from None
        else:
            self["adopt_fds"] = None
        try:
            self["gateway_config"] = config = self.build_config()
            if self["check"]:
                check_config(config)
        except ConfigError as e:
            _fail(e)
        if self["check"]:
            sys.stdout.write("configuration ok\n")
            sys.stdout.flush()
            raise SystemExit(0)

    @property
    def daemonizing(self) -> bool:
        """Whether twistd will fork before starting the service (no ``-n``)."""
        parent = self.parent
        return parent is not None and not parent.get("nodaemon", True)

    def build_config(self) -> GatewayConfig:
        """The configuration file with the command-line overrides applied."""
        path = self["config"]
        overrides = self.overrides()
        if path is not None:
            return load_config_file(path, overrides)
        if self["master-api-http"] or self["master-api-grpc"]:
            return load_config("", "<command line>", overrides)
        raise ConfigError("--config", "no configuration file given (and no --master-api-*)")

    def reload_config(self) -> GatewayConfig:
        """The file read again for a reload, with the same flags, and the same checks
        as the start (the certificate is loaded by the service)."""
        config = self.build_config()
        check_upstreams(config)
        return config

    def overrides(self) -> list[Override]:
        """The flags given, each as the key of the file it sets."""
        given = [
            Override("--port", "listen.tls", self["port"]),
            Override("--cleartext-port", "listen.cleartext", self["cleartext-port"]),
            Override("--interface", "listen.interface", self["interface"]),
            Override("--master-api-http", "master_api.http", self["master-api-http"] or None),
            Override("--master-api-grpc", "master_api.grpc", self["master-api-grpc"] or None),
            Override(
                "--event-broker-grpc", "event_broker.grpc", self["event-broker-grpc"] or None
            ),
            Override("--workers", "workers", self["workers"]),
            Override("--no-access-log", "log.access", False if self["no-access-log"] else None),
        ]
        return [override for override in given if override.value is not None]


def check_config(config: GatewayConfig) -> None:
    """Read and build what the start reads and builds, binding and connecting nothing.

    The certificate and its key (or the development certificate, generated when
    missing), as the service loads them; then :func:`check_upstreams`.  Raises
    :class:`ConfigError` naming the key.
    """
    from eventgw.service import GatewayService

    GatewayService(config).prepare()
    check_upstreams(config)


def check_upstreams(config: GatewayConfig) -> None:
    """Every configured CA bundle and JWKS file parses, and the Event Broker's HTTP
    routes build."""
    from eventgw.auth.jwks import check_jwt
    from eventgw.events.target import EVENT_BROKER_SERVICE
    from eventgw.events.transcode import RouteTable, TemplateError
    from eventgw.upstream.trust import load_trust

    api = config.master_api_http or config.master_api_grpc
    if api is not None:
        load_trust(api.ca_file, "master_api.ca_file")
    if config.event_broker is not None:
        load_trust(config.event_broker.ca_file, "event_broker.ca_file")
    check_jwt(config.auth)
    try:
        RouteTable.from_services([EVENT_BROKER_SERVICE])
    except TemplateError as e:
        raise ConfigError("event_broker", f"the broker's HTTP routes do not build: {e}") from None


def _bind(config: GatewayConfig) -> list[socket.socket]:
    """The listening sockets, TLS first; a port that cannot be bound is a ConfigError."""
    from eventgw.workers import bind_listening_socket

    listen = config.listen
    wanted = [(listen.tls, "listen.tls")]
    if listen.cleartext is not None:
        wanted.append((listen.cleartext, "listen.cleartext"))
    sockets: list[socket.socket] = []
    try:
        for port, key in wanted:
            sockets.append(bind_listening_socket(listen.interface, port, key))
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def makeService(options: Options) -> service.IService:
    """The gateway service for ``twistd eventgw``.

    Runs before twistd daemonizes and starts logging: every check that can fail is
    made here, so its one line reaches the terminal.
    """
    from eventgw.service import gateway_service

    config: GatewayConfig = options["gateway_config"]
    adopt_fds: list[int] | None = options["adopt_fds"]
    from eventgw._reactor import default_reactor
    from eventgw.reactorloop import install_lean_poll

    install_lean_poll(default_reactor(None))
    try:
        if config.workers > 1 and adopt_fds is None:
            from eventgw.workers import WorkerSupervisor

            check_config(config)
            supervisor = WorkerSupervisor(
                config,
                options.raw_args,
                loader=options.build_config,
                watch_path=options["config"],
                handle_signals=True,
            )
            supervisor.bind()
            top = service.MultiService()
            supervisor.setServiceParent(top)  # type: ignore[no-untyped-call]
            # The admin listener is the supervisor's, serving the workers' summed metrics.
            from eventgw.admin.service import supervisor_admin_service

            supervisor_admin_service(config, top)
            return _OneLineErrors(top, log=_log_setup(options, config, None))
        sockets: list[socket.socket] = []
        if adopt_fds is None:
            # Bound now and served once the service starts (when daemonizing, by the
            # child, which inherits them).
            sockets = _bind(config)
            adopt_fds = [sock.fileno() for sock in sockets]
        worker = _worker_identity()
        if worker is not None:
            _become_worker(worker[0])
        top = gateway_service(
            config,
            adopt_fds=adopt_fds,
            loader=options.reload_config,
            # A worker's supervisor watches the file and passes SIGHUP on.
            watch_path=options["config"] if worker is None else None,
            handle_signals=True,
            parent_pid=None if worker is None else worker[1],
            # A worker leaves the admin listener to its supervisor.
            admin=worker is None,
        )
        for child in top:
            child.prepare()  # the certificate, loaded once for the service
        check_upstreams(config)
    except ConfigError as e:
        _fail(e)
    return _OneLineErrors(
        top,
        sockets,
        daemonized=options.daemonizing,
        log=_log_setup(options, config, None if worker is None else worker[0]),
    )


def _log_setup(
    options: Options, config: GatewayConfig, worker: int | None
) -> Callable[[], ILogObserver | None] | None:
    """How the process's log observer is made (``log.format``), when twistd runs us."""
    twistd = options.parent
    if twistd is None:
        return None

    def make() -> ILogObserver | None:
        from eventgw.logwriter import twistd_log_observer

        return twistd_log_observer(twistd, config.log_format, worker)

    return make


def _worker_identity() -> tuple[int, int] | None:
    """``(index, supervisor pid)`` when the ``--workers`` supervisor started us."""
    from eventgw.lifecycle.signals import SUPERVISOR_ENV, WORKER_ENV

    index, parent = os.environ.get(WORKER_ENV), os.environ.get(SUPERVISOR_ENV)
    if index is None or parent is None:
        return None
    try:
        return int(index), int(parent)
    except ValueError:
        return None


def _become_worker(index: int) -> None:
    """Log lines name the worker; signals to the supervisor's group stay the
    supervisor's (it forwards them once)."""
    from eventgw.lifecycle.signals import tag_worker_logs

    tag_worker_logs(index)
    try:
        os.setpgid(0, 0)
    except OSError:
        pass


class _OneLineErrors(service.MultiService):
    """Wraps the gateway so that a start failure is one line and exit status 1.

    It owns the listening sockets bound by :func:`makeService` until the service has
    started (each port then listens on its own duplicate).  In a daemonized child a
    failure is raised as :class:`StartFailed`, which twistd passes to the parent.

    It also gives twistd the process's log observer: twistd adds the service to its
    application and then, beginning to log, asks the application for an
    ``ILogObserver`` (``twisted.application.app.AppLogger.start``), which
    :meth:`setServiceParent` sets (:mod:`eventgw.logwriter`, ``log.format``).
    """

    def __init__(
        self,
        inner: service.IService,
        sockets: list[socket.socket] | None = None,
        *,
        daemonized: bool = False,
        log: Callable[[], ILogObserver | None] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        inner.setServiceParent(self)
        self.sockets = list(sockets or ())
        self.daemonized = daemonized
        self.log_observer = log

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]
        if self.log_observer is not None and isinstance(parent, Componentized):
            observer = self.log_observer()
            if observer is not None:
                parent.setComponent(ILogObserver, observer)

    def startService(self) -> None:
        try:
            super().startService()  # type: ignore[no-untyped-call]
        except ConfigError as e:
            self.running = False
            if self.daemonized:
                raise StartFailed(f"eventgw: bad configuration: {e}") from None
            _fail(e)
        finally:
            sockets, self.sockets = self.sockets, []
            for sock in sockets:
                sock.close()
