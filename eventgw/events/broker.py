# -*- test-case-name: tests.test_events -*-
"""The gRPC client for the Event Broker: grpcio futures as Deferreds.

Shell module: imports grpcio, txaio and Twisted; the reactor is injected.

One :class:`GrpcioBrokerClient` holds one long-lived ``grpc.Channel`` to one broker address
(grpcio multiplexes every call over it and reconnects by itself).  Calls are generic
unary calls driven by the descriptors of :mod:`eventgw.events.transcode` -- the method path,
the request serializer and the response class all come from the route -- so a new
annotated broker method needs no code here.

Threads: grpcio runs a future's done-callbacks on its own threads (or inline when the
future has already finished).  The callback here does exactly one thing: hand the future
to ``reactor.callFromThread``.  The Deferred (made by txaio's Twisted flavour) is fired
on the reactor thread, never from a grpcio thread.  Cancelling the Deferred cancels the
grpcio future, which sends RST_STREAM (CANCELLED) to the broker.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

import txaio.tx
from google.protobuf.message import Message
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.logger import Logger

from eventgw._reactor import default_reactor
from eventgw.config import BrokerUpstream, parse_grpc_target
from eventgw.errors import BrokerCallFailed, ConfigError, GrpcStatus
from eventgw.events.transcode import HttpRoute
from eventgw.exchange import Headers
from eventgw.http2 import WRITES
from eventgw.upstream.h2pool import INITIAL_BACKOFF, MAX_BACKOFF
from eventgw.upstream.trust import load_trust

if TYPE_CHECKING:
    import grpc

__all__ = ["GrpcioBrokerClient", "channel_target", "import_grpc"]

# A dead broker connection is noticed within a minute even when no call is running.
_KEEPALIVE_MS: Final = 30_000
# Reconnecting after the broker went away: the same back-off as the gateway's own
# HTTP/2 pool.  With grpcio's defaults (1 s growing 1.6x up to 120 s, and a 20 s
# minimum that grpc-core also applies to the reconnect delay) events kept getting 503
# for up to 14 s after a broker that had been down 20 s was listening again; with these,
# about 3 s.
RECONNECT_BACKOFF_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", int(INITIAL_BACKOFF * 1000)),
    ("grpc.max_reconnect_backoff_ms", int(MAX_BACKOFF * 1000)),
    ("grpc.min_reconnect_backoff_ms", int(INITIAL_BACKOFF * 1000)),
)
# The broker's answers are small (ids); a larger one is a broken broker, not data.
_MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
# Requests can be as large as the largest batch the gateway accepts.
_MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024


# grpcio's EventEngine client (the default since grpcio 1.6x) reads and writes on its own
# threads and hands each completion to the polling thread: about seven context switches
# and GIL hand-offs per call, which doubled the gateway's CPU per event.  With the
# experiment off, the thread that waits for completions polls the sockets itself
# (about one switch per call; measured in profiling/events/).  grpcio reads the
# variable when it is imported, so it is set only if nobody imported grpc yet, and
# never over a value the operator chose.
GRPC_EXPERIMENTS: Final = "-event_engine_client"


def import_grpc() -> ModuleType:
    """``grpc``, imported with :data:`GRPC_EXPERIMENTS` unless already imported or set."""
    if "grpc" not in sys.modules:
        os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
    import grpc

    module: ModuleType = grpc
    return module


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class GrpcioBrokerClient:
    """Calls into one Event Broker over one long-lived grpcio channel (a
    :class:`~eventgw.events.client.BrokerClient`).

    Invariant: every Deferred returned by :meth:`call` fires exactly once, on the
    reactor thread, with the response message or a :class:`BrokerCallFailed` (or
    ``CancelledError`` when the caller cancelled it).
    """

    log = Logger()

    def __init__(
        self,
        upstream: BrokerUpstream,
        *,
        reactor: IReactorTime | IReactorFromThreads | None = None,
    ) -> None:
        # The gateway passes its reactor typed as IReactorTime; any real reactor also
        # provides IReactorFromThreads, which is what crossing threads needs.
        self._reactor: IReactorFromThreads = IReactorFromThreads(default_reactor(reactor))
        self._async = txaio.tx.with_config(loop=self._reactor)  # type: ignore[no-untyped-call]
        self.upstream = upstream
        self.deadline = upstream.deadline
        grpcio = import_grpc()
        options = [
            ("grpc.keepalive_time_ms", _KEEPALIVE_MS),
            ("grpc.max_receive_message_length", _MAX_RESPONSE_BYTES),
            ("grpc.max_send_message_length", _MAX_REQUEST_BYTES),
            *RECONNECT_BACKOFF_OPTIONS,
        ]
        target, balancing = channel_target(upstream)
        options.extend(balancing)
        if upstream.tls:
            # Every certificate of the CA file, read and checked now (None: grpcio's roots).
            root = load_trust(upstream.ca_file, "event_broker.ca_file").pem
            credentials = grpcio.ssl_channel_credentials(root_certificates=root)
            self._channel = grpcio.secure_channel(target, credentials, options)
        else:
            self._channel = grpcio.insecure_channel(target, options)
        self._callables: dict[str, grpc.UnaryUnaryMultiCallable] = {}
        self._closed = False

    @property
    def target(self) -> str:
        """The broker's address, as configured."""
        return self.upstream.target

    def _callable(self, route: HttpRoute) -> grpc.UnaryUnaryMultiCallable:
        found = self._callables.get(route.grpc_path)
        if found is None:
            found = self._channel.unary_unary(
                route.grpc_path,
                request_serializer=_serialize,
                response_deserializer=route.response_class.FromString,
            )
            self._callables[route.grpc_path] = found
        return found

    def call(
        self,
        route: HttpRoute,
        request: Message,
        metadata: Headers = [],  # noqa: B006 -- never mutated
        *,
        timeout: float | None = None,
    ) -> Deferred[Message]:
        """Start a unary call; the Deferred fires on the reactor thread.

        ``metadata`` is what :func:`~eventgw.events.client.call_metadata` returns
        (bytes, printable ASCII).
        """
        if self._closed:
            return self._async.create_future(  # type: ignore[no-any-return]
                error=BrokerCallFailed(GrpcStatus.UNAVAILABLE, "event broker client closed")
            )
        try:
            future = self._callable(route).future(
                request,
                timeout=self.deadline if timeout is None else timeout,
                metadata=tuple([(k.decode("ascii"), v.decode("ascii")) for k, v in metadata]),
            )
        except Exception as e:  # grpcio refused to start the call (e.g. closed channel)
            return self._async.create_future(  # type: ignore[no-any-return]
                error=BrokerCallFailed(GrpcStatus.INTERNAL, f"cannot start the call: {e}")
            )
        deferred: Deferred[Message] = self._async.create_future(
            canceller=lambda _d: future.cancel()
        )
        deliver = self._deliverer(deferred)

        def on_done(done: grpc.Future) -> None:
            # A grpcio thread (or ours, if already done): only cross to the reactor.
            self._reactor.callFromThread(deliver, done)

        future.add_done_callback(on_done)
        return deferred

    def _deliverer(self, deferred: Deferred[Message]) -> Callable[[grpc.Future], None]:
        def deliver(done: grpc.Future) -> None:
            if deferred.called:
                return  # cancelled by the caller; the errback already ran
            # The answer written from here flushes once, at the end (an HTTP/2
            # client's 202 then leaves as HEADERS + DATA with END_STREAM).
            WRITES.hold()
            try:
                settle(done)
            finally:
                WRITES.release()

        def settle(done: grpc.Future) -> None:
            if done.cancelled():
                self._async.reject(
                    deferred, BrokerCallFailed(GrpcStatus.CANCELLED, "call cancelled")
                )
                return
            error = done.exception()
            if error is None:
                self._async.resolve(deferred, done.result())
                return
            self._async.reject(deferred, _failure_from(error))

        return deliver

    def close(self) -> Deferred[None]:
        """Close the channel (calls still running end as CANCELLED)."""
        if not self._closed:
            self._closed = True
            self._channel.close()
        return succeed(None)


def channel_target(upstream: BrokerUpstream) -> tuple[str, list[tuple[str, Any]]]:
    """The grpcio target and channel options for the broker(s).

    One IP address: as configured.  A list of IP addresses: an ``ipv4:``/``ipv6:``
    target over all of them; one host name: ``dns:///name:port``, every address it
    resolves to (a headless Service's pods; grpcio re-resolves it itself).  Either way
    grpcio's own ``round_robin`` spreads the calls per call, over connections to every
    broker, and with ``health_check`` its
    client-side grpc.health.v1 checks (``healthCheckConfig``) leave out brokers that
    are not SERVING.  grpcio has no least-request policy nor outlier ejection; the
    ``h2`` client does both (see the README).
    """
    entries = upstream.hosts
    if not entries:
        host, port, _ = parse_grpc_target(upstream.target, "event_broker.grpc")
        if isIPAddress(host) or isIPv6Address(host):
            return upstream.target, []
        entries = ((host, port),)
    if all(isIPv6Address(host) for host, _ in entries):
        target = "ipv6:" + ",".join(f"[{host}]:{port}" for host, port in entries)
    elif all(isIPAddress(host) for host, _ in entries):
        target = "ipv4:" + ",".join(f"{host}:{port}" for host, port in entries)
    elif len(entries) == 1:
        host, port = entries[0]
        target = f"dns:///{host}:{port}"
    else:
        raise ConfigError(
            "event_broker.grpc",
            "the grpcio client takes a list of IP addresses or one host name (its DNS "
            "answers are the brokers); several host names need client: h2",
        )
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    check = upstream.balancing.health_check
    if check is not None:
        config["healthCheckConfig"] = {"serviceName": check.grpc_service}
    return target, [("grpc.service_config", json.dumps(config))]


def _failure_from(error: BaseException) -> BrokerCallFailed:
    import grpc

    if isinstance(error, grpc.Call):
        code = error.code()
        details = error.details() or ""
        trailers: Any = error.trailing_metadata() or ()
        details_bin = None
        for key, value in trailers:
            if key == "grpc-status-details-bin" and isinstance(value, bytes):
                details_bin = value
        number = code.value[0] if isinstance(code, grpc.StatusCode) else GrpcStatus.UNKNOWN
        return BrokerCallFailed(number, details, details_bin, trailers)
    return BrokerCallFailed(GrpcStatus.INTERNAL, f"event broker call failed: {error!r}")
