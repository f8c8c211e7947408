# -*- test-case-name: tests.test_events -*-
# mypy: disable-error-code="no-untyped-call"
"""End-to-end tests of /events: EventsEndpoint -> BrokerClient -> a real grpcio broker.

The broker is an in-process grpcio server on 127.0.0.1:0 (tests.events_support);
the endpoint is driven the way a downstream protocol drives it (head, body chunks, end).
"""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from twisted.internet import defer
from twisted.trial.unittest import TestCase

from eventgw._proto.cloudevents.v1.cloudevents_pb2 import CloudEvent
from eventgw.config import MIN_EVENT_SIZE, BrokerUpstream, Limits
from eventgw.errors import GrpcStatus, http_status_for_grpc
from eventgw.events.target import EVENT_BROKER_SERVICE, EventsEndpoint
from tests._proto.topics.v1 import topics_pb2
from tests.events_support import (
    FinishingWriter,
    RecordingTopics,
    binary_headers,
    exchange,
    start_broker,
    structured_body,
    wait_until,
)
from tests.support import RecordingWriter, make_head

STRUCTURED = [(b"content-type", b"application/cloudevents+json")]
BATCH = [(b"content-type", b"application/cloudevents-batch+json")]


class EventsTestCase(TestCase):
    """A broker and an endpoint pointed at it, both closed after each test."""

    deadline = 5.0
    limits = Limits()
    # Which broker client the endpoint uses; every test class runs with each (below).
    client = "grpcio"

    def setUp(self) -> None:
        self.broker, self.target = start_broker(self)
        self.endpoint = self.make_endpoint(self.target)

    def make_endpoint(self, target: str | None, **kwargs: Any) -> EventsEndpoint:
        upstream = None if target is None else BrokerUpstream(
            target=target, tls=False, deadline=kwargs.pop("deadline", self.deadline)
        )
        kwargs.setdefault("client", self.client)
        endpoint = EventsEndpoint(upstream, kwargs.pop("limits", self.limits), **kwargs)
        self.addCleanup(endpoint.close)
        return endpoint

    def assert_error(self, writer: FinishingWriter, status: int, code: int) -> dict[str, Any]:
        self.assertEqual(writer.status, status, bytes(writer.body))
        self.assertEqual(writer.header(b"content-type"), b"application/json")
        document: dict[str, Any] = writer.json()
        self.assertEqual(document["code"], code)
        return document


class PublishTests(EventsTestCase):
    """Each content mode reaches the broker as the right call, every attribute intact."""

    @defer.inlineCallbacks
    def test_binary_mode(self) -> Any:
        """Binary mode -> Publish; 202 with the broker's answer; the broker sees every
        attribute, typed."""
        headers = binary_headers("b-1", extra=[
            (b"ce-time", b"2024-05-01T12:00:00.5Z"),
            (b"ce-subject", b"room%2042"),
            (b"ce-dataschema", b"https://example.com/reading.json"),
            (b"ce-partitionkey", b"tn-1"),
        ])
        writer = yield exchange(self.endpoint, headers, b'{"celsius": 21.5}')
        self.assertEqual(writer.status, 202)
        self.assertEqual(writer.json(), {"id": "b-1"})
        self.assertEqual(writer.header(b"content-type"), b"application/json")
        self.assertEqual([name for name, _ in self.broker.calls], ["Publish"])
        event = self.broker.events[0]
        expected = CloudEvent(id="b-1", source="/sensors/tn-1", spec_version="1.0",
                              type="com.example.reading", text_data='{"celsius": 21.5}')
        expected.attributes["time"].ce_timestamp.FromJsonString("2024-05-01T12:00:00.5Z")
        expected.attributes["subject"].ce_string = "room 42"
        expected.attributes["dataschema"].ce_uri = "https://example.com/reading.json"
        expected.attributes["partitionkey"].ce_string = "tn-1"
        expected.attributes["datacontenttype"].ce_string = "application/json"
        self.assertEqual(event, expected)
        fields = writer.head.log_fields if writer.head else {}
        self.assertEqual(
            (fields["route"], fields["upstream"], fields["grpc_status"]),
            ("events", self.target, 0),
        )

    @defer.inlineCallbacks
    def test_structured_mode(self) -> Any:
        """Structured mode -> Publish, with typed extensions."""
        body = structured_body("s-1", time="2024-05-01T12:00:00Z", sequence=7, replay=False,
                               data={"celsius": 21.5})
        writer = yield exchange(self.endpoint, STRUCTURED, body, protocol="HTTP/2")
        self.assertEqual((writer.status, writer.json()), (202, {"id": "s-1"}))
        event = self.broker.events[0]
        self.assertEqual(event.attributes["sequence"].ce_integer, 7)
        self.assertEqual(event.attributes["replay"].WhichOneof("attr"), "ce_boolean")
        self.assertEqual(event.text_data, '{"celsius":21.5}')

    @defer.inlineCallbacks
    def test_data_kinds(self) -> Any:
        """JSON and text data arrive as text_data, anything else as binary_data."""
        payload = bytes(range(256))
        cases = [
            (binary_headers("d-json"), b'[1, 2]', "text_data", "[1, 2]"),
            (binary_headers("d-text", content_type=b"text/plain"), "é".encode(), "text_data",
             "é"),
            (binary_headers("d-bin", content_type=b"image/png"), payload, "binary_data", payload),
            (STRUCTURED, structured_body("d-b64", data_base64=base64.b64encode(payload).decode()),
             "binary_data", payload),
            (binary_headers("d-none"), b"", None, None),
        ]
        for headers, body, _kind, _value in cases:
            writer = yield exchange(self.endpoint, headers, body)
            self.assertEqual(writer.status, 202, bytes(writer.body))
        for event, (_, _, kind, value) in zip(self.broker.events, cases, strict=True):
            self.assertEqual(event.WhichOneof("data"), kind, event.id)
            if kind is not None:
                self.assertEqual(getattr(event, kind), value)

    @defer.inlineCallbacks
    def test_batch_of_100(self) -> Any:
        """A batch of 100 is one PublishBatch; the ids come back in order."""
        body = json.dumps([json.loads(structured_body(f"e-{n}", data={"n": n}))
                           for n in range(100)]).encode()
        writer = yield exchange(self.endpoint, BATCH, body, chunk=1000)
        self.assertEqual(writer.status, 202, bytes(writer.body))
        ids = [f"e-{n}" for n in range(100)]
        self.assertEqual(writer.json(), {"ids": ids})
        self.assertEqual([name for name, _ in self.broker.calls], ["PublishBatch"])
        self.assertEqual([event.id for event in self.broker.events], ids)

    @defer.inlineCallbacks
    def test_empty_batch(self) -> Any:
        """An empty batch is passed on and answered with no ids."""
        writer = yield exchange(self.endpoint, BATCH, b"[]")
        self.assertEqual((writer.status, writer.json()), (202, {"ids": []}))

    @defer.inlineCallbacks
    def test_200_concurrent_events(self) -> Any:
        """200 events in flight at once: every accepted id reached the broker exactly once."""
        writers = yield defer.gatherResults([
            exchange(self.endpoint, binary_headers(f"c-{n}"), b'{"n": %d}' % n)
            for n in range(200)
        ])
        accepted = [w.json()["id"] for w in writers if w.status == 202]
        self.assertEqual(len(accepted), 200)
        received = [event.id for event in self.broker.events]
        self.assertEqual(sorted(received), sorted(accepted))
        self.assertEqual(len(set(received)), 200)


class BadEventTests(EventsTestCase):
    """Malformed events are a 400 naming the attribute; the broker sees nothing."""

    @defer.inlineCallbacks
    def test_each_bad_attribute(self) -> Any:
        """Missing, empty and ill-typed attributes, in every mode."""
        required = binary_headers("x")
        cases: list[tuple[list[tuple[bytes, bytes]], bytes, str]] = []
        for index in range(4):
            name = required[index][0].decode()[3:]
            cases.append((required[:index] + required[index + 1 : 4], b"", name))
        cases += [
            (binary_headers(extra=[(b"ce-time", b"noon")]), b"", "time"),
            (binary_headers(extra=[(b"ce-dataschema", b"relative/path")]), b"", "dataschema"),
            (binary_headers(extra=[(b"ce-bad_name", b"x")]), b"", "bad_name"),
            ([*binary_headers()[:3], (b"ce-specversion", b"0.3")], b"", "specversion"),
            (STRUCTURED, structured_body(id=None), "id"),
            (STRUCTURED, structured_body(source=""), "source"),
            (STRUCTURED, structured_body(type=42), "type"),
            (STRUCTURED, structured_body(time="2024-13-01T00:00:00Z"), "time"),
            (STRUCTURED, structured_body(ratio=0.5), "ratio"),
            (STRUCTURED, structured_body(data=1, data_base64="AA=="), "data_base64"),
            (STRUCTURED, b"not json", "event"),
            (BATCH, b'{"id": "x"}', "events"),
            (BATCH, b"[" + structured_body("ok") + b"," + structured_body(type=None) + b"]",
             "events[1].type"),
        ]
        for headers, body, attribute in cases:
            writer = yield exchange(self.endpoint, headers, body)
            document = self.assert_error(writer, 400, GrpcStatus.INVALID_ARGUMENT)
            self.assertTrue(document["message"].startswith(attribute + ":"),
                            (attribute, document["message"]))
        self.assertEqual(self.broker.calls, [])

    @defer.inlineCallbacks
    def test_unsupported_format(self) -> Any:
        """A CloudEvents format other than JSON is a 415."""
        writer = yield exchange(self.endpoint, [(b"content-type", b"application/cloudevents+avro")],
                                b"\x00")
        self.assert_error(writer, 415, GrpcStatus.INVALID_ARGUMENT)
        self.assertEqual(self.broker.calls, [])


class LimitTests(EventsTestCase):
    """The event size limit."""

    limits = Limits(max_event_size=100_000)

    @defer.inlineCallbacks
    def test_declared_length_over_limit(self) -> Any:
        """A content-length over the limit is a 413 at once."""
        writer = yield exchange(self.endpoint, binary_headers(), b"x" * 100_001)
        self.assert_error(writer, 413, GrpcStatus.RESOURCE_EXHAUSTED)
        self.assertEqual(self.broker.calls, [])

    @defer.inlineCallbacks
    def test_streamed_body_over_limit(self) -> Any:
        """A body without content-length is cut off with a 413 when it passes the limit."""
        writer = yield exchange(self.endpoint, binary_headers(), b"x" * 150_000,
                                declare_length=False)
        self.assert_error(writer, 413, GrpcStatus.RESOURCE_EXHAUSTED)
        self.assertEqual(self.broker.calls, [])

    @defer.inlineCallbacks
    def test_at_the_limit(self) -> Any:
        """A body of exactly the limit passes."""
        writer = yield exchange(self.endpoint, binary_headers(content_type=b"text/plain"),
                                b"x" * 100_000, declare_length=False)
        self.assertEqual(writer.status, 202)

    @defer.inlineCallbacks
    def test_64k_always_accepted(self) -> Any:
        """Even with a smaller configured limit, 64 KiB events are accepted."""
        endpoint = self.make_endpoint(self.target, limits=Limits(max_event_size=1000))
        writer = yield exchange(endpoint, binary_headers(content_type=b"text/plain"),
                                b"y" * MIN_EVENT_SIZE)
        self.assertEqual(writer.status, 202)
        self.assertEqual(len(self.broker.events[0].text_data), MIN_EVENT_SIZE)


class BrokerErrorTests(EventsTestCase):
    """The broker's gRPC errors as google.rpc.Status JSON with the table's HTTP status."""

    deadline = 0.5

    @defer.inlineCallbacks
    def test_each_grpc_error(self) -> Any:
        """Every non-OK code maps to its HTTP status, code and message kept, except
        UNAVAILABLE, whose details name the broker's address: the client gets the kind."""
        for code in grpc.StatusCode:
            if code is grpc.StatusCode.OK:
                continue
            number = code.value[0]
            self.broker.fail_with(code, f"failed with {code.name}")
            writer = yield exchange(self.endpoint, binary_headers(), b"{}")
            document = self.assert_error(writer, http_status_for_grpc(number), number)
            expected = ("event broker unavailable" if code is grpc.StatusCode.UNAVAILABLE
                        else f"failed with {code.name}")
            self.assertEqual(document["message"], expected)
            self.assertEqual(writer.head.log_fields["grpc_status"] if writer.head else None,
                             number)

    @defer.inlineCallbacks
    def test_unauthenticated_challenge(self) -> Any:
        """UNAUTHENTICATED is a 401 with WWW-Authenticate (the broker's, when it sends one)."""
        self.broker.fail_with(grpc.StatusCode.UNAUTHENTICATED, "who are you")
        writer = yield exchange(self.endpoint, binary_headers(), b"{}")
        self.assert_error(writer, 401, GrpcStatus.UNAUTHENTICATED)
        self.assertTrue(writer.header(b"www-authenticate"))
        self.broker.fail_with(grpc.StatusCode.UNAUTHENTICATED, "token expired",
                              trailers=[("www-authenticate", 'Bearer error="invalid_token"')])
        writer = yield exchange(self.endpoint, binary_headers(), b"{}")
        self.assertEqual(writer.header(b"www-authenticate"), b'Bearer error="invalid_token"')

    @defer.inlineCallbacks
    def test_status_details(self) -> Any:
        """Details from grpc-status-details-bin are decoded into the JSON body."""
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject="tenant:a", description="full"),
        ]))
        status = status_pb2.Status(code=8, message="slow down", details=[detail])
        self.broker.fail_with(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down",
                              status.SerializeToString())
        writer = yield exchange(self.endpoint, binary_headers(), b"{}")
        document = self.assert_error(writer, 429, GrpcStatus.RESOURCE_EXHAUSTED)
        self.assertEqual(document["details"], [{
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"subject": "tenant:a", "description": "full"}],
        }])

    @defer.inlineCallbacks
    def test_deadline(self) -> Any:
        """A broker slower than the deadline is a 504."""
        self.broker.delay = 3.0
        writer = yield exchange(self.endpoint, binary_headers(), b"{}")
        self.assert_error(writer, 504, GrpcStatus.DEADLINE_EXCEEDED)

    @defer.inlineCallbacks
    def test_broker_down(self) -> Any:
        """An unreachable broker is a 503."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        endpoint = self.make_endpoint(f"127.0.0.1:{free}", deadline=5.0)
        writer = yield exchange(endpoint, binary_headers(), b"{}")
        self.assert_error(writer, 503, GrpcStatus.UNAVAILABLE)

    @defer.inlineCallbacks
    def test_no_broker_configured(self) -> Any:
        """Without a broker, events are a 503."""
        endpoint = self.make_endpoint(None)
        writer = yield exchange(endpoint, binary_headers(), b"{}")
        self.assert_error(writer, 503, GrpcStatus.UNAVAILABLE)

    @defer.inlineCallbacks
    def test_client_gone_cancels_call(self) -> Any:
        """A client that disconnects cancels its broker call; nothing is written."""
        self.endpoint = self.make_endpoint(self.target, deadline=5.0)
        self.broker.delay = 3.0
        writer = RecordingWriter()
        head = make_head(b"POST", b"/events", binary_headers(), content_length=2,
                         body_expected=True)
        handler = self.endpoint.start_exchange(head, writer)
        handler.body_received(b"{}")
        handler.body_ended([])
        yield wait_until(lambda: bool(self.broker.calls))
        handler.connection_lost("client went away")
        yield wait_until(lambda: bool(self.broker.cancelled))
        self.assertIsNone(writer.status)
        self.assertEqual(head.log_fields["grpc_status"], GrpcStatus.CANCELLED)


class HeaderTests(EventsTestCase):
    """Trace headers and the request id."""

    @defer.inlineCallbacks
    def test_trace_headers_forwarded(self) -> Any:
        """traceparent, tracestate and x-request-id reach the broker; the id comes back."""
        trace = [
            (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            (b"tracestate", b"congo=t61rcWkgMzE"),
            (b"x-request-id", b"req-42"),
            (b"authorization", b"Bearer secret"),
        ]
        writer = yield exchange(self.endpoint, binary_headers(extra=trace), b"{}")
        self.assertEqual(writer.header(b"x-request-id"), b"req-42")
        metadata = self.broker.metadata[0]
        self.assertEqual(metadata["traceparent"], trace[0][1].decode())
        self.assertEqual(metadata["tracestate"], "congo=t61rcWkgMzE")
        self.assertEqual(metadata["x-request-id"], "req-42")
        self.assertNotIn("authorization", metadata)

    @defer.inlineCallbacks
    def test_unusable_trace_values_dropped(self) -> Any:
        """Values gRPC metadata cannot carry are not forwarded; the event still goes."""
        trace = [(b"traceparent", "caf\xe9".encode("latin-1")), (b"x-request-id", b"a\tb")]
        writer = yield exchange(self.endpoint, binary_headers(extra=trace), b"{}")
        self.assertEqual(writer.status, 202)
        self.assertNotIn("traceparent", self.broker.metadata[0])
        self.assertNotEqual(self.broker.metadata[0]["x-request-id"], "a\tb")
        self.assertEqual(writer.header(b"x-request-id"),
                         str(self.broker.metadata[0]["x-request-id"]).encode())

    @defer.inlineCallbacks
    def test_request_id_generated(self) -> Any:
        """Without x-request-id one is made, sent to the broker and returned, errors too."""
        writer = yield exchange(self.endpoint, binary_headers(), b"{}")
        request_id = writer.header(b"x-request-id")
        self.assertTrue(request_id)
        assert request_id is not None
        self.assertEqual(self.broker.metadata[0]["x-request-id"], request_id.decode())
        writer = yield exchange(self.endpoint, binary_headers()[1:], b"{}")
        self.assertEqual(writer.status, 400)
        self.assertTrue(writer.header(b"x-request-id"))


class QueryTests(EventsTestCase):
    """Query parameters on /events."""

    @defer.inlineCallbacks
    def test_webhook_access_token_ignored(self) -> Any:
        """A webhook sender's ?access_token= does not stop the event (nor reach the broker)."""
        writer = yield exchange(self.endpoint, binary_headers("q-1"), b"{}",
                                path=b"/events?access_token=secret")
        self.assertEqual((writer.status, writer.json()), (202, {"id": "q-1"}))
        self.assertNotIn("secret", str(self.broker.events[0]))


class MethodTests(EventsTestCase):
    """Methods other than POST, and other paths."""

    @defer.inlineCallbacks
    def test_webhook_handshake(self) -> Any:
        """OPTIONS answers the CloudEvents webhook validation handshake."""
        writer = yield exchange(
            self.endpoint, [(b"webhook-request-origin", b"eventemitter.example.com")],
            method=b"OPTIONS",
        )
        self.assertEqual(writer.status, 200)
        self.assertEqual(writer.header(b"allow"), b"POST, OPTIONS")
        self.assertEqual(writer.header(b"webhook-allowed-origin"), b"eventemitter.example.com")
        self.assertEqual(writer.header(b"webhook-allowed-rate"), b"*")
        self.assertEqual(self.broker.calls, [])

    @defer.inlineCallbacks
    def test_other_methods(self) -> Any:
        """GET, PUT, DELETE... are 405 with Allow."""
        for method in (b"GET", b"PUT", b"DELETE", b"PATCH"):
            writer = yield exchange(self.endpoint, [], method=method)
            self.assert_error(writer, 405, GrpcStatus.UNIMPLEMENTED)
            self.assertEqual(writer.header(b"allow"), b"POST, OPTIONS")

    @defer.inlineCallbacks
    def test_unknown_path(self) -> Any:
        """A path under /events no method is annotated with is a 404."""
        writer = yield exchange(self.endpoint, binary_headers(), b"{}", path=b"/events/nope")
        self.assert_error(writer, 404, GrpcStatus.NOT_FOUND)


class AnnotatedMethodTests(EventsTestCase):
    """A second annotated service is served end to end with no gateway code."""

    def setUp(self) -> None:
        self.topics = RecordingTopics()
        self.broker, self.target = start_broker(self, topics=self.topics)
        topics = topics_pb2.DESCRIPTOR.services_by_name["Topics"]
        self.endpoint = self.make_endpoint(self.target, services=[EVENT_BROKER_SERVICE, topics])

    @defer.inlineCallbacks
    def test_get_with_path_and_query(self) -> Any:
        """GET /events/v1/topics/{name} calls Topics.GetTopic; 200 with proto3 JSON."""
        writer = yield exchange(self.endpoint, [], method=b"GET",
                                path=b"/events/v1/topics/orders?include_stats=true")
        self.assertEqual(writer.status, 200, bytes(writer.body))
        self.assertEqual(writer.json()["name"], "topics/orders")
        self.assertEqual(writer.json()["retentionSeconds"], "60")
        self.assertEqual(self.topics.requests,
                         [topics_pb2.GetTopicRequest(name="topics/orders", include_stats=True)])

    @defer.inlineCallbacks
    def test_post_json_body(self) -> Any:
        """POST with a JSON body field calls Topics.CreateTopic."""
        writer = yield exchange(self.endpoint, [(b"content-type", b"application/json")],
                                b'{"name": "topics/new", "labels": ["a"]}',
                                path=b"/events/v1/topics")
        self.assertEqual(writer.status, 200, bytes(writer.body))
        self.assertEqual(writer.json()["labels"], ["a"])

    @defer.inlineCallbacks
    def test_unimplemented_method(self) -> Any:
        """An annotated method the server lacks is UNIMPLEMENTED -> 501."""
        writer = yield exchange(self.endpoint, [], method=b"DELETE",
                                path=b"/events/v1/topics/orders")
        self.assert_error(writer, 501, GrpcStatus.UNIMPLEMENTED)

    @defer.inlineCallbacks
    def test_events_still_published(self) -> Any:
        """The broker's own routes are unchanged by the extra service."""
        writer = yield exchange(self.endpoint, binary_headers(), b"{}")
        self.assertEqual(writer.status, 202)


class TlsBrokerTests(EventsTestCase):
    """A ``grpcs://`` broker, verified against the configured CA file."""

    def setUp(self) -> None:
        from eventgw.tls import ensure_dev_certificate

        dev = ensure_dev_certificate(self.mktemp())
        with open(dev.cert_path, "rb") as f:
            cert_pem = f.read()
        with open(dev.key_path, "rb") as f:
            key_pem = f.read()
        self.ca_file = dev.cert_path
        self.broker, self.target = start_broker(
            self, credentials=grpc.ssl_server_credentials([(key_pem, cert_pem)]))

    def tls_endpoint(self, ca_file: str) -> EventsEndpoint:
        endpoint = EventsEndpoint(
            BrokerUpstream(target=self.target, tls=True, ca_file=ca_file, deadline=5.0),
            self.limits, client=self.client)
        self.addCleanup(endpoint.close)
        return endpoint

    @defer.inlineCallbacks
    def test_published_over_tls(self) -> Any:
        """The event reaches the TLS broker; 202."""
        writer = yield exchange(self.tls_endpoint(self.ca_file), binary_headers("t-1"), b"{}")
        self.assertEqual((writer.status, writer.json()), (202, {"id": "t-1"}))
        self.assertEqual([event.id for event in self.broker.events], ["t-1"])

    @defer.inlineCallbacks
    def test_untrusted_certificate(self) -> Any:
        """A broker whose certificate the CA file does not vouch for is unavailable: 503."""
        from eventgw.tls import ensure_dev_certificate

        other = ensure_dev_certificate(self.mktemp())
        writer = yield exchange(self.tls_endpoint(other.cert_path), binary_headers(), b"{}")
        self.assert_error(writer, 503, GrpcStatus.UNAVAILABLE)
        self.assertEqual(self.broker.calls, [])


class GrpcImportTests(TestCase):
    """grpcio is imported with its polling client unless the operator chose otherwise."""

    def run_python(self, code: str, env: dict[str, str]) -> Any:
        import subprocess
        import sys

        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60, check=True).stdout.strip()

    def test_experiment_set_before_grpc_is_imported(self) -> None:
        """A fresh process gets GRPC_EXPERIMENTS; an operator's own value is kept."""
        import os

        from eventgw.events.broker import GRPC_EXPERIMENTS

        code = ("import os, sys; from eventgw.events.broker import import_grpc; import_grpc(); "
                "print('grpc' in sys.modules, os.environ.get('GRPC_EXPERIMENTS'))")
        env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
        self.assertEqual(self.run_python(code, env), f"True {GRPC_EXPERIMENTS}")
        self.assertEqual(self.run_python(code, {**env, "GRPC_EXPERIMENTS": "x"}), "True x")

    def test_no_change_once_grpc_is_imported(self) -> None:
        """Too late to matter once grpc is imported: the environment is left alone."""
        import os

        from eventgw.events.broker import import_grpc

        saved = os.environ.pop("GRPC_EXPERIMENTS", None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, "GRPC_EXPERIMENTS", saved)
        self.assertIs(import_grpc(), grpc)
        self.assertNotIn("GRPC_EXPERIMENTS", os.environ)


class ShutdownTests(EventsTestCase):
    """close() drains and refuses."""

    @defer.inlineCallbacks
    def test_close_refuses_new_events(self) -> Any:
        """After close(), new events are a 503."""
        yield self.endpoint.close()
        writer = yield exchange(self.endpoint, binary_headers(), b"{}")
        self.assert_error(writer, 503, GrpcStatus.UNAVAILABLE)

    @defer.inlineCallbacks
    def test_close_waits_for_running_calls(self) -> Any:
        """A call in flight when close() starts is still answered."""
        self.broker.delay = 0.3
        pending = exchange(self.endpoint, binary_headers(), b"{}")
        yield wait_until(lambda: bool(self.broker.calls))
        yield self.endpoint.close()
        writer = yield pending
        self.assertEqual(writer.status, 202)


def _with_h2_client(case: type[EventsTestCase]) -> type[EventsTestCase]:
    """The same tests, with the endpoint calling the broker over eventgw's own HTTP/2
    client (eventgw.events.h2broker) instead of grpcio."""
    return type("H2" + case.__name__, (case,), {
        "client": "h2",
        "__doc__": f"{case.__doc__} (HTTP/2 broker client)",
        "__module__": __name__,
    })


H2PublishTests = _with_h2_client(PublishTests)
H2BadEventTests = _with_h2_client(BadEventTests)
H2LimitTests = _with_h2_client(LimitTests)
H2BrokerErrorTests = _with_h2_client(BrokerErrorTests)
H2HeaderTests = _with_h2_client(HeaderTests)
H2QueryTests = _with_h2_client(QueryTests)
H2MethodTests = _with_h2_client(MethodTests)
H2AnnotatedMethodTests = _with_h2_client(AnnotatedMethodTests)
H2ShutdownTests = _with_h2_client(ShutdownTests)
H2TlsBrokerTests = _with_h2_client(TlsBrokerTests)
