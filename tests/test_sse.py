"""Server-Sent Events through /api: a ``text/event-stream`` streams, unbuffered.

A real twisted.web backend sends one event, then waits until the test says the client
has it before sending the second: the client can only get the first event first if
the gateway passed it on at once.  Over HTTP/1.1 and HTTP/2 (TLS, ALPN), httpx client.
"""

from __future__ import annotations

import threading
from typing import Any

import httpx
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from tests.rig import gateway_config, listen_site, start_gateway


class _Events(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.go_on = threading.Event()

    def render_GET(self, request: server.Request) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.write(b"id: 1\ndata: first\n\n")

        def second() -> None:
            if not self.go_on.is_set():
                global_reactor.callLater(0.01, second)  # type: ignore[attr-defined]
                return
            request.write(b"id: 2\ndata: second\n\n")
            request.finish()

        second()
        return server.NOT_DONE_YET


class ServerSentEventsTests(TestCase):
    """text/event-stream through the reverse proxy."""

    timeout = 60

    @inlineCallbacks
    def test_first_event_arrives_before_the_second_is_sent(self) -> Any:
        """The client reads the first event while the backend still holds the second."""
        events = _Events()
        root = resource.Resource()
        api = resource.Resource()
        root.putChild(b"api", api)
        api.putChild(b"events", events)
        gw = start_gateway(self, gateway_config(api=f"http://127.0.0.1:{listen_site(self, root)}"))
        for http2 in (False, True):
            events.go_on.clear()

            def read(http2: bool = http2) -> tuple[str, list[str], str]:
                with httpx.Client(http2=http2, verify=gw.ssl_context(), timeout=20) as client:
                    with client.stream("GET", gw.https + "/api/events") as response:
                        lines = response.iter_lines()
                        seen: list[str] = []
                        while "data: first" not in seen:
                            seen.append(next(lines))
                        # Only now may the backend send the second event.
                        events.go_on.set()
                        rest = list(lines)
                        return response.headers["content-type"], rest, response.http_version

            content_type, rest, version = yield deferToThread(read)
            self.assertEqual(version, "HTTP/2" if http2 else "HTTP/1.1")
            self.assertEqual(content_type, "text/event-stream")
            self.assertIn("data: second", rest)
