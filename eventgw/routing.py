# -*- test-case-name: tests.test_routing -*-
"""Which flow serves a request: the route table and the gRPC method policy.

Core module: imports the standard library, :mod:`eventgw.grpcwire` and
:mod:`eventgw.grpc.webcodec`.

Two kinds of request are recognised before their path: a gRPC call (HTTP/2, content
type ``application/grpc...``) and a gRPC-Web call (either protocol, content type
``application/grpc-web...`` on a method path ``/pkg.Service/Method``).  A WebSocket
(an HTTP/1.1 ``Upgrade: websocket`` or an HTTP/2 extended CONNECT with
``:protocol websocket``) is relayed under ``/api`` only; elsewhere it is refused.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from eventgw.grpc.webcodec import flavour_of
from eventgw.grpcwire import CONTENT_TYPE

__all__ = ["MethodPolicy", "Route", "is_grpc", "is_grpc_web", "is_method_path", "route_for"]

# "/" service "/" method: two non-empty segments, no query (gRPC's ":path" rule).
_METHOD_PATH: Final = re.compile(rb"/[^/?#]+/[^/?#]+")


class Route(enum.Enum):
    """The three flows, plus the local 404."""

    API = "api"  # flow 2: reverse proxy to the Master API over HTTP
    EVENTS = "events"  # flow 1: CloudEvents to the Event Broker over gRPC
    GRPC = "grpc"  # flow 3: gRPC relay to the Master API
    GRPC_WEB = "grpc_web"  # flow 3 for browsers: gRPC-Web, relayed as native gRPC
    WEBSOCKET = "websocket"  # flow 2's upgrade: a WebSocket to the Master API
    UPGRADE_REFUSED = "upgrade_refused"  # a WebSocket outside /api
    NOT_FOUND = "not_found"


def _under(path: bytes, prefix: bytes) -> bool:
    # "/api", "/api/..." and "/api?..." are under /api; "/apiary" is not.
    if not path.startswith(prefix):
        return False
    rest = path[len(prefix) : len(prefix) + 1]
    return rest in (b"", b"/", b"?")


def route_for(
    target: bytes, content_type: bytes | None, http2: bool, upgrade: bytes | None = None
) -> Route:
    """The route for a request target (path and query) and its content type.

    Only HTTP/2 streams can be gRPC calls; over HTTP/1.1 a gRPC content type is routed
    like any other request.  gRPC-Web calls come over either protocol.  ``upgrade``
    is the protocol a WebSocket request asks for (``b"websocket"``), else ``None``.
    """
    if upgrade is not None:
        if upgrade == b"websocket" and _under(target, b"/api"):
            return Route.WEBSOCKET
        return Route.UPGRADE_REFUSED
    if content_type is not None:
        if http2 and is_grpc(content_type):
            return Route.GRPC
        if is_grpc_web(content_type) and is_method_path(target):
            return Route.GRPC_WEB
    if _under(target, b"/api"):
        return Route.API
    if _under(target, b"/events"):
        return Route.EVENTS
    return Route.NOT_FOUND


def is_grpc(content_type: bytes) -> bool:
    """``application/grpc``, ``application/grpc+proto``, ``application/grpc;...``."""
    if not content_type.startswith(CONTENT_TYPE):
        return False
    rest = content_type[len(CONTENT_TYPE) : len(CONTENT_TYPE) + 1]
    return rest in (b"", b"+", b";")


def is_grpc_web(content_type: bytes) -> bool:
    """``application/grpc-web``, ``...grpc-web+proto``, ``...grpc-web-text(+proto)``."""
    return flavour_of(content_type) is not None


def is_method_path(target: bytes) -> bool:
    """Whether ``target`` has the shape of a gRPC method, ``/pkg.Service/Method``."""
    return _METHOD_PATH.fullmatch(target) is not None


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """``grpc.allow`` / ``grpc.deny``: prefixes of ``/package.Service/Method``.

    Deny is checked first; a method is relayed only if some allow prefix matches.
    """

    allow: tuple[str, ...]
    deny: tuple[str, ...]

    @classmethod
    def from_lists(cls, allow: Sequence[str], deny: Sequence[str]) -> MethodPolicy:
        return cls(tuple(allow), tuple(deny))

    def permits(self, method: str) -> bool:
        """Whether the gRPC method path may be relayed."""
        if any(method.startswith(prefix) for prefix in self.deny):
            return False
        return any(method.startswith(prefix) for prefix in self.allow)
