# -*- test-case-name: tests.test_errors -*-
"""The gateway's error vocabulary: exception classes, the gRPC-code table, JSON bodies.

Core module: imports only the standard library.

Every error the gateway answers with itself -- on any flow -- is a
``google.rpc.Status``-shaped JSON object ``{"code": <grpc code>, "message": "...",
"details": [...]}``; the HTTP status comes from the single table below, the one
grpc-gateway and Envoy's JSON transcoder share.

Every :class:`GatewayError` subclass lives here, whichever module raises it: the
request parser's (:class:`RequestError`), the ``/api`` proxy's upstream failures
(:class:`ResponseError`, :class:`UpstreamUnavailable`, :class:`UpstreamTimeout`,
:class:`PoolExhausted`), and the ``/events`` flow's (:class:`RouteNotFound`,
:class:`MethodNotAllowed`, :class:`UnsupportedMediaType`, :class:`InvalidEvent`,
:class:`UnsupportedFormat`, :class:`BrokerCallFailed`).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any, Final

__all__ = [
    "BadRequest",
    "BrokerCallFailed",
    "ConfigError",
    "GatewayError",
    "GrpcStatus",
    "HeadersTooLarge",
    "InvalidEvent",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "PoolExhausted",
    "RequestError",
    "ResponseError",
    "RouteNotFound",
    "UnsupportedFormat",
    "UnsupportedMediaType",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "error_body",
    "grpc_code_for_http",
    "http_status_for_grpc",
]


class GrpcStatus(enum.IntEnum):
    """gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# grpc-gateway's runtime.HTTPStatusFromCode and Envoy's grpc_json_transcoder agree on this.
_HTTP_STATUS: Final[dict[int, int]] = {
    GrpcStatus.OK: 200,
    GrpcStatus.CANCELLED: 499,
    GrpcStatus.UNKNOWN: 500,
    GrpcStatus.INVALID_ARGUMENT: 400,
    GrpcStatus.DEADLINE_EXCEEDED: 504,
    GrpcStatus.NOT_FOUND: 404,
    GrpcStatus.ALREADY_EXISTS: 409,
    GrpcStatus.PERMISSION_DENIED: 403,
    GrpcStatus.RESOURCE_EXHAUSTED: 429,
    GrpcStatus.FAILED_PRECONDITION: 400,
    GrpcStatus.ABORTED: 409,
    GrpcStatus.OUT_OF_RANGE: 400,
    GrpcStatus.UNIMPLEMENTED: 501,
    GrpcStatus.INTERNAL: 500,
    GrpcStatus.UNAVAILABLE: 503,
    GrpcStatus.DATA_LOSS: 500,
    GrpcStatus.UNAUTHENTICATED: 401,
}

# The reverse direction, for errors the gateway raises itself with an HTTP status in
# mind (404 route, 413, 502...): the gRPC code that goes into the JSON body.
_GRPC_CODE_FOR_HTTP: Final[dict[int, GrpcStatus]] = {
    400: GrpcStatus.INVALID_ARGUMENT,
    401: GrpcStatus.UNAUTHENTICATED,
    403: GrpcStatus.PERMISSION_DENIED,
    404: GrpcStatus.NOT_FOUND,
    405: GrpcStatus.UNIMPLEMENTED,
    408: GrpcStatus.DEADLINE_EXCEEDED,
    409: GrpcStatus.ABORTED,
    413: GrpcStatus.RESOURCE_EXHAUSTED,
    415: GrpcStatus.INVALID_ARGUMENT,
    429: GrpcStatus.RESOURCE_EXHAUSTED,
    431: GrpcStatus.RESOURCE_EXHAUSTED,
    499: GrpcStatus.CANCELLED,
    501: GrpcStatus.UNIMPLEMENTED,
    502: GrpcStatus.UNAVAILABLE,
    503: GrpcStatus.UNAVAILABLE,
    504: GrpcStatus.DEADLINE_EXCEEDED,
}


def http_status_for_grpc(code: int) -> int:
    """The HTTP status for a gRPC status code; unknown codes are 500."""
    return _HTTP_STATUS.get(code, 500)


def grpc_code_for_http(status: int) -> GrpcStatus:
    """The gRPC code that best describes an HTTP error status the gateway produced."""
    code = _GRPC_CODE_FOR_HTTP.get(status)
    if code is not None:
        return code
    return GrpcStatus.INTERNAL if status >= 500 else GrpcStatus.UNKNOWN


def error_body(
    code: int, message: str, details: list[dict[str, Any]] | None = None
) -> bytes:
    """A ``google.rpc.Status`` JSON body (with a trailing newline, for curl users)."""
    payload: dict[str, Any] = {"code": int(code), "message": message}
    payload["details"] = details if details is not None else []
    return json.dumps(payload, separators=(",", ":")).encode() + b"\n"


class GatewayError(Exception):
    """Base class: an error the gateway answers itself.

    :ivar http_status: the HTTP status of the local reply.
    :ivar grpc_status: the gRPC code used in the JSON body and for gRPC streams.
    :ivar message: a short, client-safe description.
    """

    http_status: int = 500
    grpc_status: int = GrpcStatus.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        """The JSON error body for this error."""
        return error_body(self.grpc_status, self.message)


class BadRequest(GatewayError):
    """Malformed request (framing, headers, a bad event attribute): 400."""

    http_status = 400
    grpc_status = GrpcStatus.INVALID_ARGUMENT


class PayloadTooLarge(GatewayError):
    """A request body over the configured limit: 413."""

    http_status = 413
    grpc_status = GrpcStatus.RESOURCE_EXHAUSTED


class HeadersTooLarge(GatewayError):
    """A request head over the configured limit: 431."""

    http_status = 431
    grpc_status = GrpcStatus.RESOURCE_EXHAUSTED


# --- the downstream request parser ------------------------------------------------


class RequestError(BadRequest):
    """The request cannot be served; answer ``http_status`` and close the connection.

    :ivar http_status: 400 (malformed, smuggling attempt), 413 (body over the limit),
        414 (request line too long), 431 (head too large), 501 (unsupported coding or
        method), 505 (unsupported HTTP version).
    """

    def __init__(self, message: str, http_status: int = 400) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_status = grpc_code_for_http(http_status)

    def __repr__(self) -> str:
        return f"RequestError({self.message!r}, {self.http_status})"


# --- the /api proxy's upstream ------------------------------------------------------


class ResponseError(GatewayError):
    """The upstream's response is malformed or incomplete: the client gets 502.

    :ivar no_response: ``True`` when the connection closed before a single response
        byte arrived (a stale keep-alive connection looks like this).
    """

    http_status = 502
    grpc_status = GrpcStatus.UNAVAILABLE

    def __init__(self, message: str, *, no_response: bool = False) -> None:
        super().__init__(message)
        self.no_response = no_response


class UpstreamUnavailable(GatewayError):
    """The upstream refused the connection, did not resolve, or went away: 502."""

    http_status = 502
    grpc_status = GrpcStatus.UNAVAILABLE


class UpstreamTimeout(GatewayError):
    """Connecting to (or waiting for) the upstream took too long: 504."""

    http_status = 504
    grpc_status = GrpcStatus.DEADLINE_EXCEEDED


class PoolExhausted(GatewayError):
    """Every connection is busy and the wait queue is full: 503."""

    http_status = 503
    grpc_status = GrpcStatus.UNAVAILABLE


# --- /events: routes, CloudEvents, the broker ----------------------------------------


class RouteNotFound(GatewayError):
    """No annotated method serves this path: 404."""

    http_status = 404
    grpc_status = GrpcStatus.NOT_FOUND


class MethodNotAllowed(GatewayError):
    """The path is served, but not with this HTTP method: 405 with ``allowed``."""

    http_status = 405
    grpc_status = GrpcStatus.UNIMPLEMENTED

    def __init__(self, message: str, allowed: Sequence[str]) -> None:
        super().__init__(message)
        self.allowed = tuple(allowed)


class UnsupportedMediaType(GatewayError):
    """No route at this path and method takes this content type: 415."""

    http_status = 415
    grpc_status = GrpcStatus.INVALID_ARGUMENT


class InvalidEvent(BadRequest):
    """A malformed event: 400, naming the attribute (``attribute``) at fault."""

    def __init__(self, attribute: str, reason: str) -> None:
        super().__init__(f"{attribute}: {reason}")
        self.attribute = attribute
        self.reason = reason


class UnsupportedFormat(GatewayError):
    """A CloudEvents event format the gateway does not read (e.g. ``+avro``): 415."""

    http_status = 415
    grpc_status = GrpcStatus.INVALID_ARGUMENT


class BrokerCallFailed(GatewayError):
    """The broker answered a call with a non-OK status (or the call could not be made).

    :ivar code: the gRPC status code.
    :ivar details: the status message.
    :ivar details_bin: the ``grpc-status-details-bin`` trailer (a serialized
        ``google.rpc.Status``), or ``None``.
    :ivar trailers: the trailing metadata, for ``www-authenticate`` and the like.
    """

    def __init__(
        self,
        code: int,
        details: str,
        details_bin: bytes | None = None,
        trailers: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        super().__init__(details)
        self.code = code
        self.grpc_status = code
        self.http_status = http_status_for_grpc(code)
        self.details = details
        self.details_bin = details_bin
        self.trailers = tuple(trailers)

    def trailer(self, name: str) -> str | None:
        """The first text value of a trailing metadata key, or ``None``."""
        for key, value in self.trailers:
            if key == name and isinstance(value, str):
                return value
        return None


class ConfigError(Exception):
    """The configuration is unusable; ``str()`` is one line naming the key or file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
