"""Test helpers for the ``/events`` flow: an in-process recording Event Broker, sample
CloudEvents, and a way to drive a RequestTarget without a listener.

Reusable by end-to-end tests that go through the real listener::

    broker, target = start_broker(self)          # grpcio server on 127.0.0.1:0
    endpoint = EventsEndpoint(BrokerUpstream(target=target, tls=False), Limits())
    self.addCleanup(endpoint.close)
    ...POST binary_headers() / structured_body() over HTTP/1.1 or HTTP/2...
    self.assertEqual([e.id for e in broker.events], [...])
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import grpc
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from demo.eventbroker.server import MemoryBroker
from eventgw._proto.eventbroker.v1 import eventbroker_pb2, eventbroker_pb2_grpc
from eventgw.exchange import Headers, RequestHandler, RequestHead, RequestTarget
from tests._proto.topics.v1 import topics_pb2, topics_pb2_grpc
from tests.support import RecordingWriter, make_head

__all__ = [
    "WAIT_TIMEOUT",
    "FinishingWriter",
    "RecordingBroker",
    "RecordingTopics",
    "binary_headers",
    "exchange",
    "start_broker",
    "structured_body",
    "wait_until",
]

# Every wait in these tests gives up after this long (a broken gateway must not hang CI).
WAIT_TIMEOUT: Final = 30.0  # any single wait, before the test fails (only when broken)


class RecordingBroker(MemoryBroker):
    """The demo broker, plus: every request's metadata, injected failures, delays.

    ``fail_with(code, ...)`` makes every following call fail with that status (and
    ``grpc-status-details-bin`` / extra trailers when given) until ``fail_with(None)``;
    ``delay`` seconds are slept before answering (cut short when the test ends).
    """

    def __init__(self) -> None:
        super().__init__(keep=100_000, quiet=True)
        self.calls: list[tuple[str, Any]] = []
        self.metadata: list[dict[str, str | bytes]] = []
        self.cancelled: list[str] = []
        self.failure: tuple[grpc.StatusCode, str, bytes | None, Sequence[tuple[str, str]]] | None
        self.failure = None
        self.delay = 0.0
        self.released = threading.Event()

    def fail_with(
        self,
        code: grpc.StatusCode | None,
        details: str = "",
        details_bin: bytes | None = None,
        trailers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.failure = None if code is None else (code, details, details_bin, trailers)

    def _enter(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls.append((name, request))
            self.metadata.append(dict(context.invocation_metadata()))
        context.add_callback(lambda: self._ended(name, context))
        if self.delay:
            self.released.wait(self.delay)
        failure = self.failure
        if failure is not None:
            code, details, details_bin, trailers = failure
            extra: list[tuple[str, str | bytes]] = list(trailers)
            if details_bin is not None:
                extra.append(("grpc-status-details-bin", details_bin))
            if extra:
                context.set_trailing_metadata(tuple(extra))
            context.abort(code, details)

    def _ended(self, name: str, context: grpc.ServicerContext) -> None:
        if context.code() is grpc.StatusCode.CANCELLED or not context.is_active():
            with self.lock:
                self.cancelled.append(name)

    def Publish(  # the gRPC method name
        self, request: eventbroker_pb2.PublishRequest, context: grpc.ServicerContext
    ) -> eventbroker_pb2.PublishResponse:
        self._enter("Publish", request, context)
        return super().Publish(request, context)

    def PublishBatch(  # the gRPC method name
        self, request: eventbroker_pb2.PublishBatchRequest, context: grpc.ServicerContext
    ) -> eventbroker_pb2.PublishBatchResponse:
        self._enter("PublishBatch", request, context)
        return super().PublishBatch(request, context)


class RecordingTopics(topics_pb2_grpc.TopicsServicer):
    """The test-only Topics service (tests/protos): echoes what it was asked."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def GetTopic(  # the gRPC method name
        self, request: topics_pb2.GetTopicRequest, context: grpc.ServicerContext
    ) -> topics_pb2.Topic:
        self.requests.append(request)
        return topics_pb2.Topic(name=request.name, title="T", retention_seconds=60)

    def CreateTopic(  # the gRPC method name
        self, request: topics_pb2.CreateTopicRequest, context: grpc.ServicerContext
    ) -> topics_pb2.Topic:
        self.requests.append(request)
        return request.topic


def start_broker(
    case: TestCase,
    broker: RecordingBroker | None = None,
    topics: RecordingTopics | None = None,
    *,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[RecordingBroker, str]:
    """Run a grpcio Event Broker on 127.0.0.1:0 (TLS with ``credentials``) until the
    test ends; return it and its ``host:port``."""
    broker = broker or RecordingBroker()
    server = grpc.server(ThreadPoolExecutor(max_workers=16))
    eventbroker_pb2_grpc.add_EventBrokerServicer_to_server(broker, server)  # type: ignore[no-untyped-call]
    if topics is not None:
        topics_pb2_grpc.add_TopicsServicer_to_server(topics, server)  # type: ignore[no-untyped-call]
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()

    def stop() -> None:
        broker.released.set()
        server.stop(grace=None).wait(WAIT_TIMEOUT)

    case.addCleanup(stop)
    return broker, f"127.0.0.1:{port}"


def binary_headers(event_id: str = "ev-1", *, extra: Headers | None = None,
                   content_type: bytes = b"application/json") -> Headers:
    """Headers of a binary-mode event."""
    return [
        (b"ce-id", event_id.encode()),
        (b"ce-source", b"/sensors/tn-1"),
        (b"ce-type", b"com.example.reading"),
        (b"ce-specversion", b"1.0"),
        (b"content-type", content_type),
        *(extra or []),
    ]


def structured_body(event_id: str = "ev-1", **fields: Any) -> bytes:
    """The body of a structured-mode event (``application/cloudevents+json``)."""
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "/sensors/tn-1",
        "type": "com.example.reading",
    }
    document.update(fields)
    return json.dumps(document).encode()


class FinishingWriter(RecordingWriter):
    """A RecordingWriter whose ``finished`` Deferred fires when the response ends."""

    def __init__(self) -> None:
        super().__init__()
        self.finished: Deferred[FinishingWriter] = Deferred()
        self.head: RequestHead | None = None
        self.handler: RequestHandler | None = None

    def _done(self) -> None:
        if not self.finished.called:
            self.finished.callback(self)

    def write_head(self, status: int, headers: Headers, *, end: bool = False) -> None:
        super().write_head(status, headers, end=end)
        if end:
            self._done()

    def end(self, trailers: Headers | None = None) -> None:
        super().end(trailers)
        self._done()

    def abort(self, error_code: int = 0x2) -> None:
        super().abort(error_code)
        self._done()

    def json(self) -> Any:
        return json.loads(bytes(self.body))


def exchange(
    target: RequestTarget,
    headers: Headers,
    body: bytes = b"",
    *,
    method: bytes = b"POST",
    path: bytes = b"/events",
    protocol: str = "HTTP/1.1",
    declare_length: bool = True,
    chunk: int = 16 * 1024,
) -> Deferred[FinishingWriter]:
    """Run one exchange through ``target`` (as a downstream protocol would), in chunks.

    Fires with the writer once the response is complete, or fails after WAIT_TIMEOUT.
    """
    from twisted.internet import reactor

    writer = FinishingWriter()
    head = make_head(
        method, path, headers, protocol=protocol,
        content_length=len(body) if declare_length else None,
        body_expected=bool(body),
    )
    handler = target.start_exchange(head, writer)
    writer.head = head
    writer.handler = handler
    for start in range(0, len(body), chunk):
        handler.body_received(body[start : start + chunk])
    handler.body_ended([])
    return writer.finished.addTimeout(WAIT_TIMEOUT, reactor)


@defer.inlineCallbacks
def wait_until(
    predicate: Callable[[], bool], timeout: float = WAIT_TIMEOUT
) -> Generator[Deferred[None], None, None]:
    """Poll ``predicate`` on the reactor every 10 ms; fail after ``timeout`` seconds."""
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        yield task.deferLater(reactor, 0.01, lambda: None)
