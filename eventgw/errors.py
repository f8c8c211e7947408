# -*- test-case-name: tests.test_errors -*-
"""The gateway's error vocabulary: exception classes, the gRPC-code table, JSON bodies.

Core module: imports only the standard library.

Every error the gateway answers with itself -- on any flow -- is a
``google.rpc.Status``-shaped JSON object ``{"code": <grpc code>, "message": "...",
"details": [...]}``; the HTTP status comes from the single table below, the one
grpc-gateway and Envoy's JSON transcoder share.
"""

from __future__ import annotations

import enum
import json
from typing import Any, Final

__all__ = [
    "BadRequest",
    "ConfigError",
    "GatewayError",
    "GrpcStatus",
    "HeadersTooLarge",
    "PayloadTooLarge",
    "error_body",
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


class ConfigError(Exception):
    """The configuration is unusable; ``str()`` is one line naming the key or file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
