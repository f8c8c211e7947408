"""The gRPC-code to HTTP-status table and the JSON error body."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from eventgw import errors
from eventgw.errors import GrpcStatus, error_body, grpc_code_for_http, http_status_for_grpc

PACKAGE = Path(errors.__file__).resolve().parent


class StatusTableTests(SynchronousTestCase):
    def test_table_from_design(self) -> None:
        """Every code maps as grpc-gateway and Envoy map it."""
        expected = {
            0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
            9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
        }
        for code, status in expected.items():
            self.assertEqual(http_status_for_grpc(code), status, GrpcStatus(code).name)

    def test_unknown_code(self) -> None:
        """Codes outside the table are 500."""
        self.assertEqual(http_status_for_grpc(17), 500)
        self.assertEqual(http_status_for_grpc(-1), 500)

    def test_gateway_statuses(self) -> None:
        """The gateway's own statuses carry a fitting gRPC code."""
        self.assertEqual(grpc_code_for_http(404), GrpcStatus.NOT_FOUND)
        self.assertEqual(grpc_code_for_http(502), GrpcStatus.UNAVAILABLE)
        self.assertEqual(grpc_code_for_http(504), GrpcStatus.DEADLINE_EXCEEDED)
        self.assertEqual(grpc_code_for_http(413), GrpcStatus.RESOURCE_EXHAUSTED)
        self.assertEqual(grpc_code_for_http(599), GrpcStatus.INTERNAL)


class ErrorBodyTests(SynchronousTestCase):
    def test_shape(self) -> None:
        """The body is google.rpc.Status JSON with code, message and details."""
        body = json.loads(error_body(5, "no route for /x"))
        self.assertEqual(body, {"code": 5, "message": "no route for /x", "details": []})


class ErrorHomeTests(SynchronousTestCase):
    def test_every_gateway_error_lives_in_errors(self) -> None:
        """No module but eventgw.errors defines a GatewayError subclass (directly or
        through one of the subclasses defined there)."""
        names = {
            name for name, value in vars(errors).items()
            if isinstance(value, type) and issubclass(value, errors.GatewayError)
        }
        self.assertGreaterEqual(len(names), 15)
        found = []
        for path in sorted(PACKAGE.rglob("*.py")):
            if path == PACKAGE / "errors.py" or "_proto" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.ClassDef):
                    continue
                bases = {base.attr if isinstance(base, ast.Attribute) else
                         getattr(base, "id", "") for base in node.bases}
                if bases & names:
                    found.append(f"{path.relative_to(PACKAGE)}: {node.name}")
        self.assertEqual(found, [])

    def test_moved_errors_keep_their_statuses(self) -> None:
        """Each error keeps the HTTP status and gRPC code it is answered with."""
        expected = [
            (errors.RequestError("x", 431), 431, GrpcStatus.RESOURCE_EXHAUSTED),
            (errors.ResponseError("x"), 502, GrpcStatus.UNAVAILABLE),
            (errors.UpstreamUnavailable("x"), 502, GrpcStatus.UNAVAILABLE),
            (errors.UpstreamTimeout("x"), 504, GrpcStatus.DEADLINE_EXCEEDED),
            (errors.PoolExhausted("x"), 503, GrpcStatus.UNAVAILABLE),
            (errors.RouteNotFound("x"), 404, GrpcStatus.NOT_FOUND),
            (errors.MethodNotAllowed("x", ["GET"]), 405, GrpcStatus.UNIMPLEMENTED),
            (errors.UnsupportedMediaType("x"), 415, GrpcStatus.INVALID_ARGUMENT),
            (errors.InvalidEvent("id", "missing"), 400, GrpcStatus.INVALID_ARGUMENT),
            (errors.UnsupportedFormat("x"), 415, GrpcStatus.INVALID_ARGUMENT),
            (errors.BrokerCallFailed(GrpcStatus.NOT_FOUND, "x"), 404, GrpcStatus.NOT_FOUND),
        ]
        for error, http_status, grpc_status in expected:
            self.assertIsInstance(error, errors.GatewayError)
            self.assertEqual((error.http_status, error.grpc_status),
                             (http_status, grpc_status), type(error).__name__)
