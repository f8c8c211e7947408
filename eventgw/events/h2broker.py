# -*- test-case-name: tests.test_events -*-
"""Unary gRPC calls to the Event Broker over the gateway's own HTTP/2 connections.

Shell module: Twisted (Deferreds, timers) and :mod:`eventgw.upstream.h2pool` (the pooled
``h2`` client connections the gRPC relay uses); no grpcio.

The alternative to grpcio's client (:class:`eventgw.events.broker.GrpcioBrokerClient`,
selected with ``client="h2"``): everything happens on the reactor thread, so there is no thread hop
per call and no future to wrap.  One call is, per the gRPC over HTTP/2 spec
(``PROTOCOL-HTTP2.md``):

* request: HEADERS (``:method POST``, ``:scheme``, ``:path /pkg.Service/Method``,
  ``:authority``, ``content-type: application/grpc``, ``te: trailers``,
  ``grpc-timeout`` from the deadline, the forwarded metadata), then one DATA frame
  holding the 5-byte length prefix and the serialized message, with END_STREAM;
* response: HEADERS (``:status 200``, ``content-type: application/grpc...``), one
  length-prefixed message in DATA, trailers with ``grpc-status``, ``grpc-message``
  (percent-encoded) and ``grpc-status-details-bin`` (base64); or a trailers-only
  response (one HEADERS with END_STREAM carrying the status).

The deadline runs from the call's start.  It is sent as ``grpc-timeout``, set to what
is left of it when the HEADERS are actually written (after any wait for a connection),
and enforced here too: when it passes, the stream is reset (CANCEL) -- or never sent --
and the call fails with DEADLINE_EXCEEDED.  Cancelling the
Deferred resets the stream (CANCEL).  A broker that cannot be reached, or a connection
lost mid-call, is UNAVAILABLE; an HTTP/2 reset maps to a status as the spec's table says.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Final

from google.protobuf.message import DecodeError, Message
from h2.errors import ErrorCodes
from hpack import NeverIndexedHeaderTuple
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from eventgw._reactor import default_reactor
from eventgw.config import BrokerUpstream, GrpcUpstream, parse_grpc_target
from eventgw.errors import BrokerCallFailed, GrpcStatus
from eventgw.events.transcode import HttpRoute
from eventgw.exchange import Headers
from eventgw.grpcwire import (
    CONTENT_TYPE,
    PREFIX_LENGTH,
    LengthPrefixedMessage,
    MessageDecoder,
    format_grpc_timeout,
    frame_message,
    grpc_status_for_http,
    grpc_status_for_reset,
    parse_grpc_status,
    percent_decode_message,
)
from eventgw.upstream.cluster import Cluster, Host, same_pools
from eventgw.upstream.h2client import UpstreamStream
from eventgw.upstream.h2pool import GrpcConnectionPool, grpc_cluster

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads

__all__ = ["H2BrokerClient"]

# The broker's answers are small (ids); a larger one is a broken broker, not data.
MAX_RESPONSE_BYTES: Final = 4 * 1024 * 1024
# Streams to the broker share few connections: HTTP/2 multiplexes them, and each extra
# connection costs the broker a thread of attention for nothing.
DEFAULT_MAX_CONNECTIONS: Final = 2
# A dead broker connection under a running call is noticed within a minute (PINGs
# follow gRPC's keepalive rules: none without a call, none more often than the
# broker's ping policy allows without data).
KEEPALIVE_INTERVAL: Final = 30.0
# Connecting never takes longer than this, whatever the deadline (which bounds it too).
MAX_CONNECT_TIMEOUT: Final = 5.0


class _UnaryCall:
    """One call: a :class:`~eventgw.upstream.h2client.StreamListener` and a Deferred.

    Invariant: the Deferred fires at most once; after it fired (or was cancelled),
    the stream is closed or reset and every further report is ignored.
    """

    __slots__ = (
        "_attempt",
        "_cluster",
        "_deadline",
        "_decoder",
        "_done",
        "_expiring",
        "_headers",
        "_host",
        "_host_failed",
        "_http_status",
        "_message",
        "_messages",
        "_response_class",
        "_retried",
        "_size",
        "_timer",
        "deferred",
        "stream",
    )

    def __init__(
        self,
        cluster: Cluster[GrpcConnectionPool],
        host: Host[GrpcConnectionPool],
        headers: Headers,
        message: bytes,
        response_class: type[Message],
        expiring: dict[_UnaryCall, float],
        deadline: float,
    ) -> None:
        self._cluster = cluster
        self._host: Host[GrpcConnectionPool] | None = host
        self._host_failed = False
        self._attempt = 0
        cluster.started(host)
        self._headers = headers
        self._deadline = deadline
        self._message = message
        self._retried = False
        self._response_class = response_class
        self._expiring = expiring
        self._decoder = MessageDecoder()
        self._messages: list[LengthPrefixedMessage] = []
        self._size = 0
        self._http_status = b""
        self._done = False
        self._timer: IDelayedCall | None = None
        self.stream: UpstreamStream | None = None
        self.deferred: Deferred[Message] = Deferred(self._cancel)

    def start(self) -> None:
        """Open the stream and send the request (HEADERS, then DATA with END_STREAM)."""
        assert self._host is not None
        self._attempt += 1
        attempt = self._attempt
        stream = self._host.pool.open_stream(self._headers, self, self._deadline)
        # The pool may fail a stream at once (e.g. in back-off), and the call may have
        # been sent elsewhere meanwhile.
        if not self._done and attempt == self._attempt:
            self.stream = stream
            stream.send(self._message, end=True)

    def _again(self, *, elsewhere_only: bool) -> bool:
        """Send the call once more -- only for a request the broker never processed --,
        to another broker when there is one."""
        host = self._host
        if self._retried or self._done or host is None:
            return False
        other = self._cluster.pick([host.key])
        if other is None:
            if elsewhere_only:
                return False
            other = host
        self._retried = True
        self._cluster.finished(host, failed=True)
        self._host = other
        self._cluster.started(other)
        self._decoder = MessageDecoder()
        self._messages = []
        self._size = 0
        self._http_status = b""
        self.stream = None
        self.start()
        return True

    # -- the end of a call ---------------------------------------------------------

    def _finish(self) -> bool:
        if self._done:
            return False
        self._done = True
        host, self._host = self._host, None
        if host is not None:
            self._cluster.finished(host, failed=self._host_failed)
        timer = self._timer
        if timer is None:
            self._expiring.pop(self, None)
        else:
            self._timer = None
            if timer.active():
                timer.cancel()
        return True

    def _fail(self, code: int, details: str, details_bin: bytes | None = None,
              trailers: list[tuple[str, str | bytes]] | None = None) -> None:
        if code == GrpcStatus.UNAVAILABLE:
            self._host_failed = True
        if self._finish():
            self.deferred.errback(BrokerCallFailed(code, details, details_bin, trailers or ()))

    def _reset(self, code: int, details: str) -> None:
        stream = self.stream
        if stream is not None:
            stream.reset(ErrorCodes.CANCEL)
        self._fail(code, details)

    def _cancel(self, _: Deferred[Message]) -> None:
        # The caller gave up: reset the stream; Deferred.cancel fails with CancelledError.
        if self._finish() and self.stream is not None:
            self.stream.reset(ErrorCodes.CANCEL)

    def expired(self) -> None:
        self._timer = None
        self._expiring.pop(self, None)
        self._reset(GrpcStatus.DEADLINE_EXCEEDED, "Deadline Exceeded")

    # -- StreamListener ------------------------------------------------------------

    def upstream_headers(self, headers: Headers, end_stream: bool) -> None:
        status = b""
        content_type = b""
        for name, value in headers:
            if name == b":status":
                status = value
            elif name == b"content-type":
                content_type = value
        self._http_status = status
        if end_stream:
            self._trailers(headers)  # trailers-only
            return
        if status != b"200":
            return  # decided when the stream ends: grpc-status wins, else the HTTP status
        if not content_type.startswith(CONTENT_TYPE):
            self._reset(GrpcStatus.UNKNOWN,
                        f"the broker answered with content-type {content_type!r}")

    def upstream_data(self, data: bytes, flow_length: int, end_stream: bool) -> None:
        stream = self.stream
        if stream is not None and flow_length:
            stream.acknowledge(flow_length)
        if self._done:
            return
        self._size += len(data)
        if self._size > MAX_RESPONSE_BYTES + PREFIX_LENGTH:
            self._reset(GrpcStatus.RESOURCE_EXHAUSTED,
                        f"response larger than {MAX_RESPONSE_BYTES} bytes")
            return
        self._messages += self._decoder.feed(data)
        if end_stream:
            self._trailers([])

    def upstream_trailers(self, trailers: Headers) -> None:
        self._trailers(trailers)

    def upstream_reset(self, error_code: int) -> None:
        # REFUSED_STREAM: the broker did not process the request (RFC 9113 section 8.7;
        # e.g. the streams past a GOAWAY): safe to send again, once, as gRPC clients do.
        if error_code == ErrorCodes.REFUSED_STREAM and self._again(elsewhere_only=False):
            return
        self._host_failed = True
        code = grpc_status_for_reset(error_code)
        self._fail(code, f"stream reset by the broker (HTTP/2 error code {error_code})")

    def upstream_failed(self, reason: str) -> None:
        # Before it had a connection (failed inside open_stream, or the connect
        # failed): nothing reached the broker, so another one may take it.
        stream = self.stream
        if (stream is None or stream.unsent is not None) and self._again(elsewhere_only=True):
            return
        self._fail(GrpcStatus.UNAVAILABLE, reason)

    def upstream_buffered(self, queued: int) -> None:
        pass  # one small message: nothing to hold back

    def upstream_deadline_exceeded(self) -> None:
        self._fail(GrpcStatus.DEADLINE_EXCEEDED, "Deadline Exceeded")

    # -- the answer ----------------------------------------------------------------

    def _trailers(self, trailers: Headers) -> None:
        if self._done:
            return
        status: bytes | None = None
        message = b""
        details_bin: bytes | None = None
        metadata: list[tuple[str, str | bytes]] = []
        for name, value in trailers:
            if name == b"grpc-status":
                status = value
            elif name == b"grpc-message":
                message = value
            elif name == b"grpc-status-details-bin":
                details_bin = _unbase64(value)
            elif not name.startswith(b":"):
                key = name.decode("latin-1")
                if key.endswith("-bin"):
                    decoded = _unbase64(value)
                    if decoded is not None:
                        metadata.append((key, decoded))
                else:
                    metadata.append((key, value.decode("latin-1")))
        if status is None:
            code = (
                grpc_status_for_http(_http_status(self._http_status))
                if self._http_status != b"200"
                else GrpcStatus.INTERNAL
            )
            self._fail(code, f"the broker ended the call without a grpc-status "
                             f"(HTTP status {self._http_status.decode('latin-1') or '-'})")
            return
        number = parse_grpc_status(status)
        if number != GrpcStatus.OK:
            if details_bin is not None:
                metadata.append(("grpc-status-details-bin", details_bin))
            details = percent_decode_message(message) if message else ""
            self._fail(number, details, details_bin, metadata)
            return
        self._answer()

    def _answer(self) -> None:
        messages, self._messages = self._messages, []
        if not messages and self._decoder.at_boundary:
            self._fail(GrpcStatus.INTERNAL, "the broker sent no response message")
            return
        if len(messages) != 1 or not self._decoder.at_boundary:
            self._fail(GrpcStatus.INTERNAL, "the broker's response is not one whole message")
            return
        (message,) = messages
        if message.flag != 0:
            self._fail(GrpcStatus.INTERNAL, "the broker sent a compressed message unasked")
            return
        try:
            response = self._response_class.FromString(message.data)
        except DecodeError as e:
            self._fail(GrpcStatus.INTERNAL, f"cannot parse the broker's response: {e}")
            return
        if self._finish():
            self.deferred.callback(response)


def _http_status(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0  # no (or no numeric) :status: UNKNOWN, like any unlisted status


def _unbase64(value: bytes) -> bytes | None:
    # Binary metadata is base64, padding optional (PROTOCOL-HTTP2.md).
    try:
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        return None


class H2BrokerClient:
    """Calls into one Event Broker over pooled HTTP/2 connections, on the reactor thread.

    A :class:`~eventgw.events.client.BrokerClient`, like
    :class:`eventgw.events.broker.GrpcioBrokerClient`: every Deferred returned by
    :meth:`call` fires exactly once, with the response message or a
    :class:`~eventgw.errors.BrokerCallFailed` (``CancelledError`` when cancelled).
    """

    def __init__(
        self,
        upstream: BrokerUpstream,
        *,
        reactor: IReactorTime | IReactorFromThreads | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        previous: H2BrokerClient | None = None,
    ) -> None:
        # The gateway's reactor type says IReactorTime or IReactorFromThreads; timers
        # are what this client needs (every real reactor provides both).
        self._reactor: IReactorTime = IReactorTime(default_reactor(reactor))
        reactor = self._reactor
        self.upstream = upstream
        self.deadline = upstream.deadline
        host, port, _ = parse_grpc_target(upstream.target, "event_broker.grpc")
        config = GrpcUpstream(
            host=host,
            port=port,
            tls=upstream.tls,
            address=upstream.target,
            ca_file=upstream.ca_file,
            connect_timeout=min(MAX_CONNECT_TIMEOUT, upstream.deadline),
            max_connections=max_connections,
            keepalive_interval=KEEPALIVE_INTERVAL,
            hosts=upstream.hosts,
            balancing=upstream.balancing,
        )
        self.cluster = grpc_cluster(
            "event_broker", config, reactor, trust_key="event_broker.ca_file"
        )
        if previous is not None and same_pools(previous.upstream, upstream):
            self.cluster.take_over(previous.cluster)
        self.cluster.start()
        prefix: Headers = [
            (b":method", b"POST"),
            (b":scheme", self._pool.scheme),
        ]
        self._prefix = prefix
        self._suffix: Headers = [
            (b":authority", self._pool.authority),
            (b"content-type", CONTENT_TYPE),
            (b"te", b"trailers"),
        ]
        self._paths: dict[str, bytes] = {}
        # Calls with the default deadline, in the order they started -- which is the
        # order they expire in -- with their expiry time.  One timer serves them all
        # (a callLater per call, and its cancel, cost more than the rest of the
        # bookkeeping); calls with their own timeout get their own timer.
        self._expiring: dict[_UnaryCall, float] = {}
        self._sweep: IDelayedCall | None = None
        self._closed = False

    @property
    def _pool(self) -> GrpcConnectionPool:
        """The first broker's pool (scheme and :authority of the calls)."""
        return next(iter(self.cluster.hosts.values())).pool

    @property
    def target(self) -> str:
        """The broker's address, as configured."""
        return self.upstream.target

    def call(
        self,
        route: HttpRoute,
        request: Message,
        metadata: Headers = [],  # noqa: B006 -- never mutated
        *,
        timeout: float | None = None,
    ) -> Deferred[Message]:
        """Start a unary call; the Deferred fires on the reactor thread."""
        if self._closed:
            return fail(BrokerCallFailed(GrpcStatus.UNAVAILABLE, "event broker client closed"))
        seconds = self.deadline if timeout is None else timeout
        path = self._paths.get(route.grpc_path)
        if path is None:
            path = self._paths[route.grpc_path] = route.grpc_path.encode("ascii")
        headers = [
            *self._prefix,
            (b":path", path),
            *self._suffix,
            # A stand-in: the pool writes what is left of the deadline when it sends.
            (b"grpc-timeout", format_grpc_timeout(seconds)),
            # Per-request values (request ids, trace ids) never repeat: adding them to
            # the HPACK dynamic table would only evict the entries that do.
            *[NeverIndexedHeaderTuple(name, value) for name, value in metadata],
        ]
        now = self._reactor.seconds()
        host = self.cluster.pick()
        if host is None:
            return fail(BrokerCallFailed(GrpcStatus.UNAVAILABLE, "no event broker is available"))
        call = _UnaryCall(self.cluster, host, headers,
                          frame_message(request.SerializeToString()),
                          route.response_class, self._expiring, now + seconds)
        if timeout is None:
            self._expiring[call] = now + self.deadline
            if self._sweep is None:
                self._sweep = self._reactor.callLater(self.deadline, self._expire)
        else:
            call._timer = self._reactor.callLater(timeout, call.expired)
        call.start()
        return call.deferred

    def _expire(self) -> None:
        self._sweep = None
        now = self._reactor.seconds()
        expiring = self._expiring
        while expiring:
            call, expiry = next(iter(expiring.items()))
            if expiry > now:
                self._sweep = self._reactor.callLater(expiry - now, self._expire)
                return
            call.expired()  # removes it from expiring

    def close(self) -> Deferred[None]:
        """Close the connections (calls still running end as UNAVAILABLE)."""
        if self._closed:
            return succeed(None)
        self._closed = True
        closed = self.cluster.close().addCallback(lambda _: None)

        def stop_sweeping(result: None) -> None:
            # Every call has ended with its connection by now.
            sweep, self._sweep = self._sweep, None
            if sweep is not None and sweep.active():
                sweep.cancel()
            return result

        return closed.addBoth(stop_sweeping)
