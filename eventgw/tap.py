# -*- test-case-name: tests.test_tap -*-
"""``twistd eventgw``: command-line options and ``makeService`` (Twisted's tap convention).

Shell module.  The YAML file named by ``--config`` is the primary interface; the
flags override single keys.  A bad configuration ends the start with one line on
stderr naming the key or file, and exit status 1, instead of a traceback.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

from twisted.application import service
from twisted.python import usage

from eventgw import __version__
from eventgw.config import GatewayConfig, Override, load_config, load_config_file
from eventgw.errors import ConfigError

__all__ = ["Options", "makeService"]


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
            self["gateway_config"] = self.build_config()
        except ConfigError as e:
            _fail(e)

    def build_config(self) -> GatewayConfig:
        """The configuration file with the command-line overrides applied."""
        path = self["config"]
        overrides = self.overrides()
        if path is not None:
            return load_config_file(path, overrides)
        if self["master-api-http"] or self["master-api-grpc"]:
            return load_config("", "<command line>", overrides)
        raise ConfigError("--config", "no configuration file given (and no --master-api-*)")

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


def makeService(options: Options) -> service.IService:
    """The gateway service for ``twistd eventgw``."""
    from eventgw.service import gateway_service

    config: GatewayConfig = options["gateway_config"]
    if config.workers > 1 and options["adopt_fds"] is None:
        from eventgw.workers import WorkerSupervisor

        supervisor = WorkerSupervisor(config, options.raw_args)
        try:
            supervisor.bind()
        except ConfigError as e:
            _fail(e)
        top = service.MultiService()
        supervisor.setServiceParent(top)  # type: ignore[no-untyped-call]
        return top
    top = gateway_service(config, adopt_fds=options["adopt_fds"])
    try:
        # Load the certificate now, before twistd starts logging, so an unreadable
        # one is reported on the terminal (ports are bound later, in startService).
        for child in top:
            child.prepare()
    except ConfigError as e:
        _fail(e)
    return _OneLineErrors(top)


class _OneLineErrors(service.MultiService):
    """Wraps the gateway so that a port in use or unreadable cert is one line, exit 1."""

    def __init__(self, inner: service.IService) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        inner.setServiceParent(self)

    def startService(self) -> None:
        try:
            super().startService()  # type: ignore[no-untyped-call]
        except ConfigError as e:
            self.running = False
            _fail(e)
