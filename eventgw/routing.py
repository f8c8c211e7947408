# -*- test-case-name: tests.test_routing -*-
"""Which flow serves a request: the route table and the gRPC method policy.

Core module: imports the standard library and :mod:`eventgw.grpcwire`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from eventgw.grpcwire import CONTENT_TYPE

__all__ = ["MethodPolicy", "Route", "is_grpc", "route_for"]


class Route(enum.Enum):
    """The three flows, plus the local 404."""

    API = "api"  # flow 2: reverse proxy to the Master API over HTTP
    EVENTS = "events"  # flow 1: CloudEvents to the Event Broker over gRPC
    GRPC = "grpc"  # flow 3: gRPC relay to the Master API
    NOT_FOUND = "not_found"


def _under(path: bytes, prefix: bytes) -> bool:
    # "/api", "/api/..." and "/api?..." are under /api; "/apiary" is not.
    if not path.startswith(prefix):
        return False
    rest = path[len(prefix) : len(prefix) + 1]
    return rest in (b"", b"/", b"?")


def route_for(target: bytes, content_type: bytes | None, http2: bool) -> Route:
    """The route for a request target (path and query) and its content type.

    Only HTTP/2 streams can be gRPC calls; over HTTP/1.1 a gRPC content type is routed
    like any other request.
    """
    if http2 and content_type is not None and is_grpc(content_type):
        return Route.GRPC
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
