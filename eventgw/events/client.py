# -*- test-case-name: tests.test_broker_client -*-
"""What the ``/events`` target needs from an Event Broker client, and which one it gets.

Shell module: the factory builds one of the two clients, both Twisted shells.

:class:`BrokerClient` is the interface :mod:`eventgw.events.target` depends on, and
exactly what it uses: the broker's address for the access log, one unary call per
exchange, and closing at shutdown.  Two classes provide it:

* :class:`~eventgw.events.broker.GrpcioBrokerClient` (``event_broker.client: grpcio``,
  the default): grpcio's channel, its futures brought back to the reactor thread;
* :class:`~eventgw.events.h2broker.H2BrokerClient` (``event_broker.client: h2``): unary
  calls over the gateway's own pooled HTTP/2 connections, all on the reactor thread.

:func:`new_broker_client` picks one; :func:`call_metadata` builds the metadata either
takes.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Final, Protocol

from eventgw.config import BROKER_CLIENTS, BrokerUpstream
from eventgw.events.broker import GrpcioBrokerClient
from eventgw.events.h2broker import H2BrokerClient
from eventgw.exchange import Headers

if TYPE_CHECKING:
    from collections.abc import Container

    from google.protobuf.message import Message
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorFromThreads, IReactorTime

    from eventgw.events.transcode import HttpRoute

__all__ = [
    "FORWARDED_HEADERS",
    "BrokerClient",
    "call_metadata",
    "new_broker_client",
    "new_request_id",
]

# Trace context (W3C Trace Context), the request id and the caller's identity (set by
# the gateway's access checks, a client's own value removed) travel to the broker as
# metadata.
FORWARDED_HEADERS: Final = (b"traceparent", b"tracestate", b"x-request-id", b"x-eventgw-client")
# Metadata values are single header lines; anything longer is not a trace header.
_MAX_FORWARDED_VALUE: Final = 1024
_PRINTABLE: Final = re.compile(rb"[\x20-\x7e]+")


class BrokerClient(Protocol):
    """A client of one Event Broker.

    Invariant: every Deferred returned by :meth:`call` fires exactly once, on the
    reactor thread, with the response message or a
    :class:`~eventgw.errors.BrokerCallFailed` (``CancelledError`` when the caller
    cancelled it; cancelling cancels the call at the broker).
    """

    @property
    def target(self) -> str:
        """The broker's address, as configured."""

    def call(self, route: HttpRoute, request: Message, metadata: Headers) -> Deferred[Message]:
        """Start the unary call ``route`` names, with ``request`` and ``metadata`` (what
        :func:`call_metadata` returns), under the configured deadline."""

    def close(self) -> Deferred[None]:
        """Let go of the connections; calls still running fail."""


def new_broker_client(
    upstream: BrokerUpstream,
    kind: str,
    *,
    reactor: IReactorTime | IReactorFromThreads | None = None,
    previous: BrokerClient | None = None,
) -> BrokerClient:
    """The client ``event_broker.client`` names (``kind``, one of ``BROKER_CLIENTS``);
    ``previous``: the client a reload replaces (the h2 client takes over the
    connections of brokers both configurations name)."""
    if kind == "h2":
        return H2BrokerClient(
            upstream, reactor=reactor,
            previous=previous if isinstance(previous, H2BrokerClient) else None,
        )
    if kind == "grpcio":
        return GrpcioBrokerClient(upstream, reactor=reactor)
    raise ValueError(f"unknown broker client {kind!r} (one of {BROKER_CLIENTS})")


def call_metadata(
    headers: Headers, forwarded: Container[bytes] = FORWARDED_HEADERS
) -> tuple[Headers, bytes]:
    """The metadata to send with a call, and the request id (generated when absent).

    ``forwarded`` names the headers that travel (by default :data:`FORWARDED_HEADERS`;
    the events endpoint adds the claim headers the JWT providers forward).  Names and
    values are bytes, as on the wire; the grpcio client decodes them.
    """
    metadata: Headers = []
    request_id = b""
    for name, value in headers:
        if name in forwarded and len(value) <= _MAX_FORWARDED_VALUE:
            text = value.strip(b" \t")
            # gRPC metadata values are printable ASCII (gRPC over HTTP/2 spec); grpcio
            # fails the whole call (INTERNAL) on anything else, so such a value is dropped.
            if not text or not _PRINTABLE.fullmatch(text):
                continue
            if any(key == name for key, _ in metadata):
                continue
            if name == b"x-request-id":
                request_id = text
            metadata.append((name, text))
    if not request_id:
        request_id = new_request_id()
        metadata.append((b"x-request-id", request_id))
    return metadata, request_id


def new_request_id() -> bytes:
    """A fresh request id: 128 random bits as 32 hex digits (cheaper than ``uuid4``)."""
    return os.urandom(16).hex().encode("ascii")
