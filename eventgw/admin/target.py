# -*- test-case-name: tests.test_admin -*-
"""What the admin listener answers: health, readiness, metrics and gRPC health.

Shell module (it renders the metrics registry and writes on the reactor thread).
:class:`AdminTarget` is a :class:`~eventgw.exchange.RequestTarget`, served by the same
downstream protocols as the gateway's own ports (HTTP/1.1 and h2c on one cleartext
port), so a Kubernetes ``httpGet`` probe, a Prometheus scrape and a gRPC health probe
all reach it:

* ``GET /healthz``: 200 ``{"status": "ok"}`` while the process runs.
* ``GET /readyz``: 200 ``{"status": "serving"}``, 503 ``{"status": "draining"}`` from
  the first moment of a drain.
* ``GET /metrics``: the Prometheus text format.
* ``GET /upstreams``: JSON, every balanced upstream's hosts with their state
  (available, ejected, unhealthy, draining), requests in flight and counts.
* ``grpc.health.v1.Health/Check`` and ``/Watch`` for the service ``""``: SERVING, or
  NOT_SERVING while draining (``Watch`` pushes the change); any other service name is
  NOT_FOUND (``Check``) or SERVICE_UNKNOWN (``Watch``), as the health protocol says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from eventgw.admin.metrics import scrape_registry
from eventgw.admin.state import ServingState
from eventgw.errors import GrpcStatus
from eventgw.exchange import (
    Headers,
    RequestHandler,
    RequestHead,
    ResponseWriter,
    StaticReply,
    send_error,
)
from eventgw.grpcwire import frame_message, trailers_only

__all__ = ["AdminTarget"]

CHECK_PATH: Final = b"/grpc.health.v1.Health/Check"
WATCH_PATH: Final = b"/grpc.health.v1.Health/Watch"
_GRPC_HEADERS: Final[Headers] = [(b"content-type", b"application/grpc")]
_GRPC_OK: Final[Headers] = [(b"grpc-status", b"0")]
_MAX_HEALTH_REQUEST: Final = 4096

_Status = health_pb2.HealthCheckResponse.ServingStatus


def _json(writer: ResponseWriter, status: int, body: dict[str, str], head_only: bool) -> None:
    data = json.dumps(body).encode()
    writer.write_head(status, [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(data)),
        (b"cache-control", b"no-store"),
    ], end=head_only)
    if not head_only:
        writer.write_body(data)
        writer.end()


def _message(status: int) -> bytes:
    response = health_pb2.HealthCheckResponse(status=status)
    return frame_message(response.SerializeToString())


class AdminTarget:
    """Routes an admin request by path (and gRPC content type).

    :ivar state: the process's serving state.
    :ivar registry: what ``/metrics`` renders (by default: :func:`scrape_registry`).
    """

    def __init__(
        self,
        state: ServingState,
        registry: Callable[[], CollectorRegistry] = scrape_registry,
    ) -> None:
        self.state = state
        self.registry = registry
        self.watches: set[_HealthCall] = set()

    def start_exchange(self, head: RequestHead, writer: ResponseWriter) -> RequestHandler:
        head.log_fields["route"] = "admin"
        path = head.path
        content_type = head.header(b"content-type") or b""
        if content_type.startswith(b"application/grpc"):
            if path in (CHECK_PATH, WATCH_PATH) and head.method == b"POST":
                return _HealthCall(self, writer, watch=path == WATCH_PATH)
            writer.write_head(200, trailers_only(GrpcStatus.UNIMPLEMENTED,
                                                 "no such method on the admin listener"),
                              end=True)
            return StaticReply()
        if head.method not in (b"GET", b"HEAD"):
            send_error(writer, 405, "only GET and HEAD", headers=[(b"allow", b"GET, HEAD")])
            return StaticReply()
        head_only = head.method == b"HEAD"
        if path == b"/healthz":
            _json(writer, 200, {"status": "ok"}, head_only)
        elif path == b"/readyz":
            if self.state.draining:
                _json(writer, 503, {"status": "draining"}, head_only)
            else:
                _json(writer, 200, {"status": "serving"}, head_only)
        elif path == b"/upstreams":
            source = self.state.upstreams
            body = json.dumps(
                {"upstreams": source() if source is not None else {}}, indent=2
            ).encode() + b"\n"
            writer.write_head(200, [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ], end=head_only)
            if not head_only:
                writer.write_body(body)
                writer.end()
        elif path == b"/metrics":
            data = generate_latest(self.registry())
            writer.write_head(200, [
                (b"content-type", CONTENT_TYPE_LATEST.encode()),
                (b"content-length", b"%d" % len(data)),
            ], end=head_only)
            if not head_only:
                writer.write_body(data)
                writer.end()
        else:
            send_error(writer, 404,
                       "the admin listener serves /healthz, /readyz, /metrics, /upstreams")
        return StaticReply()


class _HealthCall:
    """One ``Check`` (unary) or ``Watch`` (server streaming) call."""

    def __init__(self, target: AdminTarget, writer: ResponseWriter, *, watch: bool) -> None:
        self.target = target
        self.writer = writer
        self.watch = watch
        self._body = b""
        self._cancel: Callable[[], None] | None = None
        self._done = False

    def body_received(self, data: bytes) -> None:
        if len(self._body) + len(data) > _MAX_HEALTH_REQUEST:
            self._finish_status(GrpcStatus.RESOURCE_EXHAUSTED, "request too large")
            return
        self._body += data

    def _status(self) -> int:
        return int(_Status.NOT_SERVING if self.target.state.draining else _Status.SERVING)

    def _finish_status(self, code: int, message: str) -> None:
        if self._done:
            return
        self._done = True
        self.writer.write_head(200, trailers_only(code, message), end=True)

    def body_ended(self, trailers: Headers) -> None:
        if self._done:
            return
        body = self._body
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._finish_status(GrpcStatus.INTERNAL, "expected one uncompressed message")
            return
        try:
            request = health_pb2.HealthCheckRequest.FromString(body[5:])
        except DecodeError:
            self._finish_status(GrpcStatus.INTERNAL, "bad HealthCheckRequest")
            return
        known = request.service == ""
        if not self.watch:
            if not known:
                self._finish_status(GrpcStatus.NOT_FOUND, "unknown service")
                return
            self._done = True
            self.writer.write_head(200, _GRPC_HEADERS)
            self.writer.write_body(_message(self._status()))
            self.writer.end(_GRPC_OK)
            return
        self.writer.write_head(200, _GRPC_HEADERS)
        if not known:
            self.writer.write_body(_message(int(_Status.SERVICE_UNKNOWN)))
            return  # the stream stays open: the service might appear (it never does)
        self.writer.write_body(_message(self._status()))
        if not self.target.state.draining:
            self.target.watches.add(self)
            self._cancel = self.target.state.on_change(self._changed)

    def _changed(self, serving: bool) -> None:
        if not self._done:
            self.writer.write_body(_message(int(_Status.SERVING if serving else
                                                _Status.NOT_SERVING)))

    def connection_lost(self, reason: str) -> None:
        self._done = True
        self.target.watches.discard(self)
        if self._cancel is not None:
            self._cancel()
            self._cancel = None
