"""Unit tests for the gRPC relay's sans-IO bookkeeping (eventgw.grpc.relay): no sockets."""

from __future__ import annotations

from h2.errors import ErrorCodes
from twisted.trial.unittest import SynchronousTestCase

from eventgw.errors import GrpcStatus
from eventgw.exchange import Headers, RequestHead
from eventgw.grpc.relay import (
    UPSTREAM_QUEUE_HIGH,
    UPSTREAM_QUEUE_LOW,
    AbortResponse,
    Acknowledge,
    CancelTimer,
    EndResponse,
    PauseRequestBody,
    RelayStream,
    ResetUpstream,
    ResumeRequestBody,
    SendUpstream,
    StartTimer,
    WriteBody,
    WriteHead,
    refusal,
    split_upstream_headers,
    upstream_request_headers,
)
from eventgw.routing import MethodPolicy
from tests.support import make_head

GRPC_HEADERS: Headers = [
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"user-agent", b"grpc-python/1.0"),
    (b"grpc-timeout", b"300m"),
    (b"grpc-encoding", b"gzip"),
    (b"x-token-bin", b"AAEC"),
    (b"connection", b"keep-alive"),
    (b"keep-alive", b"timeout=5"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"h2c"),
    (b"host", b"gateway.test"),
    (b"x-forwarded-for", b"10.0.0.1"),
]


def grpc_head(headers: Headers | None = None, *, body: bool = True) -> RequestHead:
    return make_head(
        b"POST",
        b"/demo.masterapi.v1.Items/GetItem",
        GRPC_HEADERS if headers is None else headers,
        protocol="HTTP/2",
        peer="192.0.2.7",
        content_length=None,
        body_expected=body,
    )


def message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


OK_HEAD: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc")]
OK_TRAILERS: Headers = [(b"grpc-status", b"0")]


class HeaderRuleTests(SynchronousTestCase):
    def test_request_headers(self) -> None:
        """Pseudo-headers come first with the upstream's authority; connection-specific
        headers go, gRPC's own and -bin metadata stay, x-forwarded-for is appended."""
        headers = upstream_request_headers(grpc_head(), b"master:50051", b"http")
        self.assertEqual(
            headers,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/demo.masterapi.v1.Items/GetItem"),
                (b":authority", b"master:50051"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"user-agent", b"grpc-python/1.0"),
                (b"grpc-timeout", b"300m"),
                (b"grpc-encoding", b"gzip"),
                (b"x-token-bin", b"AAEC"),
                (b"x-forwarded-for", b"10.0.0.1, 192.0.2.7"),
            ],
        )

    def test_te_other_than_trailers_dropped(self) -> None:
        """``te`` with any value but ``trailers`` is not forwarded (RFC 9113 8.2.2)."""
        head = grpc_head([(b"te", b"gzip"), (b"content-type", b"application/grpc")])
        names = [name for name, _ in upstream_request_headers(head, b"m:1", b"http")]
        self.assertNotIn(b"te", names)
        self.assertIn((b"x-forwarded-for", b"192.0.2.7"),
                      upstream_request_headers(head, b"m:1", b"http"))

    def test_split_upstream_headers(self) -> None:
        """The status is split off; pseudo and connection headers are dropped."""
        status, kept = split_upstream_headers(
            [(b":status", b"200"), (b"content-type", b"application/grpc"),
             (b"connection", b"close"), (b"x-a-bin", b"AA==")]
        )
        self.assertEqual(status, 200)
        self.assertEqual(kept, [(b"content-type", b"application/grpc"), (b"x-a-bin", b"AA==")])


class RefusalTests(SynchronousTestCase):
    def test_refusal(self) -> None:
        """Deny wins over allow; the message names the method."""
        policy = MethodPolicy.from_lists(["/"], ["/eventbroker."])
        self.assertIsNone(refusal(b"/demo.masterapi.v1.Items/GetItem", policy))
        reason = refusal(b"/eventbroker.v1.EventBroker/Publish", policy)
        assert reason is not None
        self.assertIn("/eventbroker.v1.EventBroker/Publish", reason)


class RelayStreamTests(SynchronousTestCase):
    def relay(self, headers: Headers | None = None, body: bool = True) -> RelayStream:
        return RelayStream(grpc_head(headers, body=body), b"master:50051", b"http")

    def test_unary_call(self) -> None:
        """A unary call: timer, body up, END_STREAM up, head, DATA, trailers down."""
        r = self.relay()
        self.assertEqual(r.start(), [StartTimer(0.3)])
        self.assertEqual(r.request_data(message(b"req")), [SendUpstream(message(b"req"))])
        self.assertEqual(r.request_ended_by_client(), [SendUpstream(b"", end=True)])
        self.assertEqual(
            r.upstream_headers(OK_HEAD, False),
            [WriteHead(200, [(b"content-type", b"application/grpc")])],
        )
        self.assertEqual(
            r.upstream_data(message(b"rep"), 8, False),
            [WriteBody(message(b"rep")), Acknowledge(8)],
        )
        self.assertEqual(
            r.upstream_trailers(OK_TRAILERS), [CancelTimer(), EndResponse(OK_TRAILERS)]
        )
        self.assertTrue(r.finished)
        self.assertEqual(r.grpc_status, 0)
        self.assertEqual(r.client_gone(), [])
        self.assertEqual(r.bytes_up, 8)
        self.assertEqual(r.bytes_down, 8)

    def test_no_body_request_ends_at_start(self) -> None:
        """A request complete with its HEADERS is half-closed upstream at once."""
        r = self.relay([(b"content-type", b"application/grpc")], body=False)
        self.assertEqual(r.start(), [SendUpstream(b"", end=True)])

    def test_trailers_only_stays_trailers_only(self) -> None:
        """An upstream trailers-only response becomes one HEADERS with END_STREAM."""
        r = self.relay()
        r.start()
        headers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                   (b"grpc-status", b"5"), (b"grpc-message", b"not%20found")]
        self.assertEqual(
            r.upstream_headers(headers, True),
            [CancelTimer(), WriteHead(200, headers[1:], end=True)],
        )
        self.assertEqual(r.grpc_status, 5)
        self.assertTrue(r.finished)
        self.assertEqual(r.request_data(b"late"), [])

    def test_non_200_status(self) -> None:
        """A 503 from upstream becomes trailers-only UNAVAILABLE and the stream is reset."""
        r = self.relay()
        r.start()
        actions = r.upstream_headers([(b":status", b"503")], False)
        self.assertEqual(actions[0], CancelTimer())
        head = actions[1]
        assert isinstance(head, WriteHead)
        self.assertTrue(head.end)
        self.assertIn((b"grpc-status", b"14"), head.headers)
        self.assertEqual(actions[2:], [ResetUpstream(ErrorCodes.CANCEL)])
        self.assertEqual(r.grpc_status, GrpcStatus.UNAVAILABLE)

    def test_client_cancel_resets_upstream(self) -> None:
        """A client RST_STREAM resets the upstream stream with CANCEL, once."""
        r = self.relay()
        r.start()
        r.upstream_headers(OK_HEAD, False)
        self.assertEqual(r.client_gone(), [CancelTimer(), ResetUpstream(ErrorCodes.CANCEL)])
        self.assertEqual(r.client_gone(), [])
        self.assertEqual(r.grpc_status, GrpcStatus.CANCELLED)
        # Late DATA for the cancelled stream gives its window back, nothing else.
        self.assertEqual(r.upstream_data(b"xx", 2, False), [Acknowledge(2)])

    def test_upstream_reset_before_head(self) -> None:
        """REFUSED_STREAM before the response head is a trailers-only UNAVAILABLE."""
        r = self.relay()
        r.start()
        actions = r.upstream_reset(ErrorCodes.REFUSED_STREAM)
        head = actions[1]
        assert isinstance(head, WriteHead)
        self.assertTrue(head.end)
        self.assertIn((b"grpc-status", b"14"), head.headers)
        self.assertEqual(r.grpc_status, 14)

    def test_upstream_reset_after_head(self) -> None:
        """After the head, an upstream reset resets the client's stream with its code."""
        r = self.relay()
        r.start()
        r.upstream_headers(OK_HEAD, False)
        self.assertEqual(
            r.upstream_reset(ErrorCodes.CANCEL),
            [CancelTimer(), AbortResponse(ErrorCodes.CANCEL)],
        )
        self.assertEqual(r.grpc_status, GrpcStatus.CANCELLED)

    def test_deadline_before_head(self) -> None:
        """On expiry: upstream reset, trailers-only DEADLINE_EXCEEDED."""
        r = self.relay()
        r.start()
        actions = r.deadline_expired()
        self.assertEqual(actions[0], ResetUpstream(ErrorCodes.CANCEL))
        head = actions[1]
        assert isinstance(head, WriteHead)
        self.assertTrue(head.end)
        self.assertIn((b"grpc-status", b"4"), head.headers)
        self.assertEqual(r.upstream_reset(ErrorCodes.CANCEL), [])

    def test_deadline_between_messages(self) -> None:
        """After the head and at a message boundary: trailers with grpc-status 4."""
        r = self.relay()
        r.start()
        r.upstream_headers(OK_HEAD, False)
        r.upstream_data(message(b"one"), 8, False)
        actions = r.deadline_expired()
        self.assertEqual(actions[0], ResetUpstream(ErrorCodes.CANCEL))
        end = actions[1]
        assert isinstance(end, EndResponse) and end.trailers is not None
        self.assertEqual(end.trailers[0], (b"grpc-status", b"4"))

    def test_deadline_mid_message(self) -> None:
        """Mid-message, the client's stream is reset instead of a truncated message."""
        r = self.relay()
        r.start()
        r.upstream_headers(OK_HEAD, False)
        r.upstream_data(message(b"one")[:6], 6, False)
        self.assertEqual(
            r.deadline_expired(),
            [ResetUpstream(ErrorCodes.CANCEL), AbortResponse(ErrorCodes.CANCEL)],
        )

    def test_upstream_failure(self) -> None:
        """A lost upstream connection is UNAVAILABLE, trailers-only before the head; the
        message names the kind, not the reason (which names the Master API's address)."""
        r = self.relay()
        r.start()
        actions = r.upstream_failed("ipv4:10.0.0.5:50051: connection lost")
        head = actions[1]
        assert isinstance(head, WriteHead)
        self.assertIn((b"grpc-status", b"14"), head.headers)
        self.assertEqual(dict(head.headers)[b"grpc-message"], b"Master API unavailable")

    def test_request_watermarks(self) -> None:
        """Queued request bytes pause the client above HIGH and resume at LOW."""
        r = self.relay()
        self.assertEqual(r.upstream_buffered(UPSTREAM_QUEUE_HIGH), [])
        self.assertEqual(r.upstream_buffered(UPSTREAM_QUEUE_HIGH + 1), [PauseRequestBody()])
        self.assertEqual(r.upstream_buffered(UPSTREAM_QUEUE_HIGH + 2), [])
        self.assertEqual(r.upstream_buffered(UPSTREAM_QUEUE_LOW + 1), [])
        self.assertEqual(r.upstream_buffered(UPSTREAM_QUEUE_LOW), [ResumeRequestBody()])
        self.assertEqual(r.peak_queued_upstream, UPSTREAM_QUEUE_HIGH + 2)

    def test_slow_reader_holds_acknowledgements(self) -> None:
        """While the client is paused, upstream DATA is passed on but not acknowledged;
        on resume everything held is acknowledged at once."""
        r = self.relay()
        r.start()
        r.upstream_headers(OK_HEAD, False)
        self.assertEqual(r.response_paused(), [])
        self.assertEqual(r.upstream_data(b"a" * 100, 100, False), [WriteBody(b"a" * 100)])
        self.assertEqual(r.upstream_data(b"b" * 50, 60, False), [WriteBody(b"b" * 50)])
        self.assertEqual(r.unacknowledged, 160)
        self.assertEqual(r.response_resumed(), [Acknowledge(160)])
        self.assertEqual(r.unacknowledged, 0)
        self.assertEqual(r.peak_unacknowledged, 160)
        self.assertEqual(r.upstream_data(b"c", 1, False), [WriteBody(b"c"), Acknowledge(1)])

    def test_held_credit_released_when_call_ends(self) -> None:
        """Window credit held for a paused client is given back when the call ends
        (here: the client goes away), after the upstream reset, so the connection's
        shared window does not shrink for good."""
        r = self.relay()
        r.start()
        r.upstream_headers(OK_HEAD, False)
        r.response_paused()
        r.upstream_data(b"a" * 100, 100, False)
        self.assertEqual(
            r.client_gone(), [CancelTimer(), ResetUpstream(ErrorCodes.CANCEL), Acknowledge(100)]
        )
        self.assertEqual(r.unacknowledged, 0)
        self.assertEqual(r.response_resumed(), [])

    def test_held_credit_released_after_trailers(self) -> None:
        """Trailers arriving while the client is paused end the call and release the
        held credit."""
        r = self.relay()
        r.start()
        r.upstream_headers(OK_HEAD, False)
        r.response_paused()
        r.upstream_data(message(b"x"), 6, False)
        self.assertEqual(
            r.upstream_trailers(OK_TRAILERS),
            [CancelTimer(), EndResponse(OK_TRAILERS), Acknowledge(6)],
        )

