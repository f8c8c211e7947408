"""The gRPC-code to HTTP-status table and the JSON error body."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from eventgw.errors import GrpcStatus, error_body, grpc_code_for_http, http_status_for_grpc


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
