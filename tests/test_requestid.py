"""The request id: the client's sane x-request-id kept, anything else replaced, and the
fields every response gets (date, server, x-request-id)."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from eventgw.config import Limits
from eventgw.downstream.http1server import Http1ServerProtocol
from eventgw.downstream.stamp import http_date, stamp
from eventgw.exchange import RequestHead
from eventgw.requestid import MAX_LENGTH, assign_request_id
from tests.support import EchoTarget
from tests.test_http1server import RecordingTransport

GENERATED = re.compile(rb"[0-9a-f]{32}")


def head_with(headers: list[tuple[bytes, bytes]]) -> RequestHead:
    return RequestHead(method=b"GET", target=b"/api/x", authority=b"h", scheme=b"https",
                       headers=headers, protocol="HTTP/1.1", peer="127.0.0.1")


class AssignTests(SynchronousTestCase):
    def test_sane_client_id_kept(self) -> None:
        """A sane client id is kept, the header list untouched, and logged."""
        headers = [(b"x-request-id", b"abc-123_X.y:z/1+=@")]
        head = head_with(headers)
        self.assertEqual(assign_request_id(head), b"abc-123_X.y:z/1+=@")
        self.assertIs(head.headers, headers)
        self.assertEqual(head.log_fields["request_id"], "abc-123_X.y:z/1+=@")

    def test_missing_id_generated(self) -> None:
        """Without one a fresh id is generated and appended to a new header list."""
        headers = [(b"x-a", b"1")]
        head = head_with(headers)
        request_id = assign_request_id(head)
        self.assertRegex(request_id, GENERATED)
        self.assertEqual(head.headers, [(b"x-a", b"1"), (b"x-request-id", request_id)])
        self.assertEqual(headers, [(b"x-a", b"1")])

    def test_insane_ids_replaced(self) -> None:
        """Too long, empty, spaces, control characters or several values: replaced, and
        exactly one x-request-id is left for the upstream."""
        for values in ([b"x" * (MAX_LENGTH + 1)], [b""], [b"a b"], [b"a\x01"],
                       [b"a", b"b"], [b"\xff"]):
            head = head_with([(b"x-request-id", v) for v in values])
            request_id = assign_request_id(head)
            self.assertRegex(request_id, GENERATED)
            self.assertEqual([v for n, v in head.headers if n == b"x-request-id"],
                             [request_id])
        head = head_with([(b"x-request-id", b"y" * MAX_LENGTH)])
        self.assertEqual(assign_request_id(head), b"y" * MAX_LENGTH)


class StampTests(SynchronousTestCase):
    def test_added_when_missing(self) -> None:
        """date, server and x-request-id are added when missing, kept when present."""
        self.assertEqual([n for n, _ in stamp([], b"id")], [b"date", b"server", b"x-request-id"])
        given = [(b"date", b"d"), (b"server", b"up"), (b"x-request-id", b"theirs")]
        self.assertEqual(stamp(given, b"id"), given)

    def test_date_format(self) -> None:
        """The Date is an IMF-fixdate (RFC 9110 section 5.6.7), cached per second."""
        self.assertEqual(http_date(784111777.0), b"Sun, 06 Nov 1994 08:49:37 GMT")
        self.assertEqual(http_date(784111777.9), b"Sun, 06 Nov 1994 08:49:37 GMT")
        self.assertEqual(http_date(784111778.0), b"Sun, 06 Nov 1994 08:49:38 GMT")
        parsedate_to_datetime(http_date().decode())


class ResponseTests(SynchronousTestCase):
    def exchange(self, request: bytes) -> bytes:
        proto = Http1ServerProtocol(EchoTarget(), Limits(), scheme=b"https",
                                    reactor=MemoryReactorClock())
        transport = RecordingTransport()
        proto.makeConnection(transport)
        proto.dataReceived(request)
        return transport.value()

    def test_response_fields(self) -> None:
        """A response carries Date, Server: eventgw and the client's x-request-id."""
        data = self.exchange(b"GET /x HTTP/1.1\r\nHost: h\r\nX-Request-Id: r-1\r\n\r\n")
        head = data.split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"\r\nx-request-id: r-1\r\n", head + b"\r\n")
        self.assertIn(b"\r\nserver: eventgw\r\n", head + b"\r\n")
        self.assertRegex(head, rb"\r\ndate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT")

    def test_gateway_error_fields(self) -> None:
        """The gateway's own 404 and a parse-error 400 carry them too."""
        data = self.exchange(b"GET /missing HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 404 "))
        self.assertRegex(data, rb"\r\nx-request-id: [0-9a-f]{32}\r\n")
        self.assertIn(b"\r\nserver: eventgw\r\n", data)
        data = self.exchange(b"GET /x HTTP/1.1\r\nHost: h\r\nBad Header: 1\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 400 "))
        self.assertIn(b"\r\ndate: ", data)
        self.assertIn(b"\r\nserver: eventgw\r\n", data)
