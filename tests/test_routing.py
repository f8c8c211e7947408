"""The route table, gRPC detection and the allow/deny method policy."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from eventgw.routing import MethodPolicy, Route, is_grpc, route_for


class RouteForTests(SynchronousTestCase):
    def test_api_paths(self) -> None:
        """/api, /api/..., and /api?q go to the Master API; /apiary does not."""
        for target in (b"/api", b"/api/", b"/api/v1/things?x=1", b"/api?x"):
            self.assertIs(route_for(target, None, False), Route.API, target)
        self.assertIs(route_for(b"/apiary", None, False), Route.NOT_FOUND)

    def test_events_paths(self) -> None:
        """/events and below go to the events endpoint."""
        for target in (b"/events", b"/events/batch", b"/events?x=1"):
            self.assertIs(route_for(target, None, True), Route.EVENTS)
        self.assertIs(route_for(b"/eventsx", None, False), Route.NOT_FOUND)

    def test_grpc_only_over_http2(self) -> None:
        """A gRPC content type is a gRPC call over HTTP/2 only, whatever the path."""
        self.assertIs(route_for(b"/pkg.Svc/M", b"application/grpc", True), Route.GRPC)
        self.assertIs(route_for(b"/api/x", b"application/grpc+proto", True), Route.GRPC)
        self.assertIs(route_for(b"/pkg.Svc/M", b"application/grpc", False), Route.NOT_FOUND)

    def test_other_paths(self) -> None:
        """Anything else is a 404."""
        self.assertIs(route_for(b"/", None, False), Route.NOT_FOUND)
        self.assertIs(route_for(b"*", None, False), Route.NOT_FOUND)


class IsGrpcTests(SynchronousTestCase):
    def test_variants(self) -> None:
        """application/grpc with +suffix or parameters counts; look-alikes do not."""
        for value in (b"application/grpc", b"application/grpc+proto", b"application/grpc;x=y"):
            self.assertTrue(is_grpc(value))
        for value in (b"application/grpc-web", b"application/grpcx", b"text/plain", b""):
            self.assertFalse(is_grpc(value))


class MethodPolicyTests(SynchronousTestCase):
    def test_deny_first(self) -> None:
        """A method under a deny prefix is refused even when allowed."""
        policy = MethodPolicy.from_lists(["/"], ["/eventbroker."])
        self.assertFalse(policy.permits("/eventbroker.v1.EventBroker/Publish"))
        self.assertTrue(policy.permits("/demo.v1.Things/Get"))

    def test_allow_list(self) -> None:
        """Only methods under an allow prefix are relayed."""
        policy = MethodPolicy.from_lists(["/demo.v1.Things/"], [])
        self.assertTrue(policy.permits("/demo.v1.Things/Get"))
        self.assertFalse(policy.permits("/demo.v1.Other/Get"))
        self.assertFalse(MethodPolicy.from_lists([], []).permits("/a.B/C"))
