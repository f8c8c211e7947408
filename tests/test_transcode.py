# -*- test-case-name: tests.test_transcode -*-
# mypy: disable-error-code="no-untyped-call"
"""Tests for eventgw.events.transcode: routes from google.api.http annotations, without sockets."""

from __future__ import annotations

import base64
import json

from google.api import annotations_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from twisted.trial.unittest import SynchronousTestCase

from eventgw._proto.eventbroker.v1 import eventbroker_pb2
from eventgw.errors import (
    BadRequest,
    GrpcStatus,
    InvalidEvent,
    MethodNotAllowed,
    RouteNotFound,
    UnsupportedMediaType,
)
from eventgw.events.transcode import (
    BodyKind,
    PathTemplate,
    RouteTable,
    TemplateError,
    build_request,
    response_body,
    status_body,
    status_details,
)
from tests._proto.topics.v1 import topics_pb2

BROKER = eventbroker_pb2.DESCRIPTOR.services_by_name["EventBroker"]
TOPICS = topics_pb2.DESCRIPTOR.services_by_name["Topics"]

BINARY_HEADERS = [
    (b"ce-id", b"1"), (b"ce-source", b"/s"), (b"ce-type", b"t"), (b"ce-specversion", b"1.0"),
    (b"content-type", b"application/json"),
]


class PathTemplateTests(SynchronousTestCase):
    """google.api.http path templates."""

    def test_literal(self) -> None:
        """A literal template matches itself only."""
        template = PathTemplate.parse("/events")
        self.assertEqual(template.match("/events"), {})
        self.assertIsNone(template.match("/events/"))
        self.assertIsNone(template.match("/eventsx"))

    def test_single_segment_variable(self) -> None:
        """{name} is one segment, percent-decoded fully."""
        template = PathTemplate.parse("/v1/{name}/x")
        self.assertEqual(template.match("/v1/a%2Fb%20c/x"), {"name": "a/b c"})
        self.assertIsNone(template.match("/v1/a/b/x"))
        self.assertIsNone(template.match("/v1//x"))

    def test_variable_with_segments(self) -> None:
        """{name=topics/*} binds a pattern of several segments."""
        template = PathTemplate.parse("/v1/{name=topics/*}")
        self.assertEqual(template.variables, ("name",))
        self.assertEqual(template.match("/v1/topics/t1"), {"name": "topics/t1"})
        self.assertIsNone(template.match("/v1/queues/t1"))
        self.assertIsNone(template.match("/v1/topics/t1/x"))

    def test_double_wildcard(self) -> None:
        """** takes the rest of the path; %2F stays escaped in multi-segment variables."""
        template = PathTemplate.parse("/v1/{topic.name=topics/*}/{rest=**}")
        self.assertEqual(
            template.match("/v1/topics/a/b%2Fc/d%20e"),
            {"topic.name": "topics/a", "rest": "b%2Fc/d e"},
        )
        self.assertIsNone(PathTemplate.parse("/v1/**").match("/v1/"))
        self.assertEqual(PathTemplate.parse("/v1/**").match("/v1/a/b"), {})

    def test_verb(self) -> None:
        """A trailing :verb must be present."""
        template = PathTemplate.parse("/v1/{name=topics/*}:replace")
        self.assertEqual(template.match("/v1/topics/x:replace"), {"name": "topics/x"})
        self.assertIsNone(template.match("/v1/topics/x"))
        self.assertIsNone(template.match("/v1/topics/x:other"))

    def test_bad_templates(self) -> None:
        """Malformed templates are refused when the table is built."""
        for text in ("events", "/a/**/b", "/{a.}", "/{a}/{a}", "/a:", "/a//b", "/{a={b}}",
                     "/a/{b=**}/c"):
            self.assertRaises(TemplateError, PathTemplate.parse, text)


class EventBrokerRoutesTests(SynchronousTestCase):
    """The Event Broker's own routes, read from eventbroker.proto."""

    def setUp(self) -> None:
        self.table = RouteTable.from_services([BROKER])

    def test_routes_from_annotations(self) -> None:
        """Publish and PublishBatch both bind POST /events, single and batch CloudEvents."""
        shown = [(r.http_method, r.template.text, r.body, r.body_kind, r.grpc_path)
                 for r in self.table.routes]
        self.assertEqual(shown, [
            ("POST", "/events", "event", BodyKind.CLOUDEVENT,
             "/eventbroker.v1.EventBroker/Publish"),
            ("POST", "/events", "events", BodyKind.CLOUDEVENT_BATCH,
             "/eventbroker.v1.EventBroker/PublishBatch"),
        ])

    def test_content_type_picks_the_method(self) -> None:
        """The batch media type picks PublishBatch; anything else Publish."""
        match = self.table.match("POST", "/events", b"application/cloudevents-batch+json")
        self.assertEqual(match.route.method.name, "PublishBatch")
        for content_type in (b"application/cloudevents+json", b"application/json", None,
                             b"application/octet-stream"):
            match = self.table.match("POST", "/events", content_type)
            self.assertEqual(match.route.method.name, "Publish", content_type)

    def test_not_found_and_not_allowed(self) -> None:
        """Other paths are 404, other methods 405 listing the allowed ones."""
        error = self.assertRaises(RouteNotFound, self.table.match, "POST", "/events/x", None)
        self.assertEqual(error.http_status, 404)
        error = self.assertRaises(MethodNotAllowed, self.table.match, "GET", "/events", None)
        self.assertEqual((error.http_status, error.allowed), (405, ("POST",)))

    def test_publish_request_from_binary_mode(self) -> None:
        """A binary-mode event becomes PublishRequest.event."""
        match = self.table.match("POST", "/events", b"application/json")
        request = build_request(match, "", BINARY_HEADERS, b'{"a":1}')
        assert isinstance(request, eventbroker_pb2.PublishRequest)
        self.assertEqual(request.event.id, "1")
        self.assertEqual(request.event.text_data, '{"a":1}')

    def test_batch_request(self) -> None:
        """A batch becomes PublishBatchRequest.events."""
        match = self.table.match("POST", "/events", b"application/cloudevents-batch+json")
        body = json.dumps([
            {"id": str(n), "source": "/s", "type": "t", "specversion": "1.0"} for n in range(3)
        ]).encode()
        request = build_request(match, "", [], body)
        assert isinstance(request, eventbroker_pb2.PublishBatchRequest)
        self.assertEqual([event.id for event in request.events], ["0", "1", "2"])

    def test_bad_event_names_attribute(self) -> None:
        """A bad event is an InvalidEvent (400) naming the attribute."""
        match = self.table.match("POST", "/events", b"application/json")
        error = self.assertRaises(
            InvalidEvent, build_request, match, "", BINARY_HEADERS[1:], b""
        )
        self.assertEqual((error.http_status, error.attribute), (400, "id"))

    def test_unknown_query_parameter_ignored(self) -> None:
        """Parameters that name no field are ignored (webhook senders add access_token)."""
        match = self.table.match("POST", "/events", b"application/json")
        request = build_request(match, "access_token=abc&verbose", BINARY_HEADERS, b"")
        assert isinstance(request, eventbroker_pb2.PublishRequest)
        self.assertEqual(request.event.id, "1")

    def test_query_cannot_override_the_event(self) -> None:
        """A query parameter naming a field inside the body field is not applied."""
        match = self.table.match("POST", "/events", b"application/json")
        request = build_request(match, "event.id=other", BINARY_HEADERS, b"")
        assert isinstance(request, eventbroker_pb2.PublishRequest)
        self.assertEqual(request.event.id, "1")

    def test_response_json(self) -> None:
        """Responses use the proto3 JSON mapping; empty repeated fields are shown."""
        route = self.table.routes[1]
        self.assertEqual(
            response_body(route, eventbroker_pb2.PublishBatchResponse(ids=["a", "b"])),
            b'{"ids":["a","b"]}\n',
        )
        self.assertEqual(
            response_body(route, eventbroker_pb2.PublishBatchResponse()), b'{"ids":[]}\n'
        )
        self.assertEqual(
            response_body(self.table.routes[0], eventbroker_pb2.PublishResponse(id="x")),
            b'{"id":"x"}\n',
        )

    def test_response_json_as_json_format_writes_it(self) -> None:
        """The string-fields shortcut gives exactly json_format's proto3 JSON."""
        from google.protobuf import json_format

        ids = ["", "x", 'quote " and \\ backslash', "é ☃ \U0001f600", "\n\t\x00"]
        responses: list[Message] = [eventbroker_pb2.PublishResponse(id=value) for value in ids]
        responses += [eventbroker_pb2.PublishBatchResponse(ids=ids),
                      eventbroker_pb2.PublishBatchResponse()]
        for response in responses:
            route = self.table.routes[0 if isinstance(response,
                                                      eventbroker_pb2.PublishResponse) else 1]
            expected = json.dumps(
                json_format.MessageToDict(response, always_print_fields_with_no_presence=True),
                separators=(",", ":"), ensure_ascii=False,
            ).encode() + b"\n"
            self.assertEqual(response_body(route, response), expected)


class AnnotatedMethodTests(SynchronousTestCase):
    """More annotated methods (tests/protos/.../topics.proto) become routes, no code."""

    def setUp(self) -> None:
        self.table = RouteTable.from_services([BROKER, TOPICS])

    def test_every_binding_is_a_route(self) -> None:
        """Each rule and additional binding is a route; unannotated methods are not."""
        shown = [(r.http_method, r.template.text, r.grpc_path) for r in self.table.routes[2:]]
        self.assertEqual(shown, [
            ("GET", "/events/v1/{name=topics/*}", "/topics.v1.Topics/GetTopic"),
            ("GET", "/events/v1/{topic=topics/*}/log/{rest=**}", "/topics.v1.Topics/ListEvents"),
            ("POST", "/events/v1/topics", "/topics.v1.Topics/CreateTopic"),
            ("PATCH", "/events/v1/{name=topics/*}", "/topics.v1.Topics/UpdateTopic"),
            ("PUT", "/events/v1/{name=topics/*}:replace", "/topics.v1.Topics/UpdateTopic"),
            ("DELETE", "/events/v1/{name=topics/*}", "/topics.v1.Topics/DeleteTopic"),
        ])
        self.assertEqual(
            self.table.allowed_methods("/events/v1/topics/a"), ["GET", "PATCH", "DELETE"]
        )

    def test_path_and_query(self) -> None:
        """Path variables and query parameters (nested, repeated, typed) fill the request."""
        match = self.table.match("GET", "/events/v1/topics/t%201/log/2024/05", None)
        request = build_request(
            match, "page_size=10&kinds=a&kinds=b&owner.email=x%40y&owner.verified=true", [], b""
        )
        self.assertEqual(request, topics_pb2.ListEventsRequest(
            topic="topics/t 1", rest="2024/05", page_size=10, kinds=["a", "b"],
            owner=topics_pb2.Owner(email="x@y", verified=True),
        ))

    def test_camel_case_query_names(self) -> None:
        """Query parameters may use the JSON (lowerCamelCase) field names."""
        match = self.table.match("GET", "/events/v1/topics/t/log/x", None)
        request = build_request(match, "pageSize=3", [], b"")
        assert isinstance(request, topics_pb2.ListEventsRequest)
        self.assertEqual(request.page_size, 3)

    def test_bad_query_values(self) -> None:
        """A value of the wrong type is a 400 naming the parameter."""
        match = self.table.match("GET", "/events/v1/topics/t/log/x", None)
        for query, name in (("page_size=many", "page_size"), ("owner.verified=yes", "owner"),
                            ("page_size=1&page_size=2", "page_size"), ("owner=x", "owner")):
            error = self.assertRaises(BadRequest, build_request, match, query, [], b"")
            self.assertIn(name, error.message, query)

    def test_path_wins_over_query(self) -> None:
        """A query parameter cannot override a field bound by the path."""
        match = self.table.match("GET", "/events/v1/topics/a", None)
        request = build_request(match, "name=topics/b&include_stats=1", [], b"")
        self.assertEqual(request, topics_pb2.GetTopicRequest(name="topics/a", include_stats=True))

    def test_body_field(self) -> None:
        """body: "topic" reads that field from the JSON body; other fields from the query."""
        match = self.table.match("POST", "/events/v1/topics", b"application/json")
        body = (b'{"name": "topics/n", "retentionSeconds": "3600",'
                b' "created": "2024-01-01T00:00:00Z"}')
        request = build_request(match, "request_id=r1", [], body)
        assert isinstance(request, topics_pb2.CreateTopicRequest)
        self.assertEqual(request.request_id, "r1")
        self.assertEqual(request.topic.retention_seconds, 3600)
        self.assertEqual(request.topic.created.seconds, 1704067200)

    def test_body_star_with_path(self) -> None:
        """body: "*" is the whole message; the path variable wins over the body."""
        match = self.table.match("PUT", "/events/v1/topics/p:replace", None)
        request = build_request(match, "", [], b'{"name": "topics/q", "title": "T"}')
        self.assertEqual(request, topics_pb2.Topic(name="topics/p", title="T"))

    def test_bad_json_body(self) -> None:
        """A body that is not the message's JSON is a 400."""
        match = self.table.match("PATCH", "/events/v1/topics/p", None)
        for body in (b"{", b'{"retentionSeconds": "soon"}', b'{"nosuch": 1}'):
            error = self.assertRaises(BadRequest, build_request, match, "", [], body)
            self.assertTrue(error.message.startswith("body:"), error.message)

    def test_response_body_field(self) -> None:
        """response_body selects one field of the response."""
        match = self.table.match("GET", "/events/v1/topics/t/log/x", None)
        response = topics_pb2.ListEventsResponse(entries=["e1"], next_page_token="n")
        self.assertEqual(response_body(match.route, response), b'["e1"]\n')

    def test_response_mapping(self) -> None:
        """int64 as strings, camelCase names, timestamps as RFC 3339."""
        route = self.table.match("GET", "/events/v1/topics/t", None).route
        topic = topics_pb2.Topic(name="topics/t", retention_seconds=5)
        topic.created.FromJsonString("2024-01-01T00:00:00Z")
        document = json.loads(response_body(route, topic))
        self.assertEqual(document["retentionSeconds"], "5")
        self.assertEqual(document["created"], "2024-01-01T00:00:00Z")
        self.assertEqual(document["labels"], [])

    def test_json_route_refuses_batch_media_type(self) -> None:
        """No batch route at a path: the batch media type is a 415 there."""
        self.assertRaises(
            UnsupportedMediaType, self.table.match, "POST", "/events/v1/topics",
            b"application/cloudevents-batch+json",
        )


def runtime_service() -> ServiceDescriptor:
    """A service whose descriptor is made here, at run time, not by protoc."""
    file = descriptor_pb2.FileDescriptorProto(
        name="tests/runtime/ping.proto", package="runtime.ping.v1", syntax="proto3",
        dependency=["google/api/annotations.proto"],
    )
    request = file.message_type.add(name="PingRequest")
    request.field.add(name="word", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    request.field.add(name="times", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
                      label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    file.message_type.add(name="PingResponse")
    method = file.service.add(name="Pinger").method.add(
        name="Ping", input_type=".runtime.ping.v1.PingRequest",
        output_type=".runtime.ping.v1.PingResponse",
    )
    method.options.Extensions[annotations_pb2.http].get = "/events/ping/{word}"
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(file.name)
    except KeyError:
        pool.Add(file)
    return pool.FindFileByName(file.name).services_by_name["Pinger"]


class RuntimeDescriptorTests(SynchronousTestCase):
    """Any descriptor with annotations is enough: no generated code, no gateway code."""

    def test_route_from_runtime_descriptor(self) -> None:
        """A method described at run time is routed and its request built."""
        table = RouteTable.from_services([BROKER, runtime_service()])
        match = table.match("GET", "/events/ping/hello", None)
        self.assertEqual(match.route.grpc_path, "/runtime.ping.v1.Pinger/Ping")
        request = build_request(match, "times=3", [], b"")
        expected = message_factory.GetMessageClass(match.route.method.input_type)(
            word="hello", times=3
        )
        self.assertEqual(request, expected)


class StatusBodyTests(SynchronousTestCase):
    """gRPC errors as google.rpc.Status JSON."""

    def test_without_details(self) -> None:
        """Code and message, empty details."""
        self.assertEqual(
            json.loads(status_body(GrpcStatus.NOT_FOUND, "no topic")),
            {"code": 5, "message": "no topic", "details": []},
        )

    def test_details_decoded(self) -> None:
        """Known detail types are rendered as proto3 JSON with their @type."""
        status = status_pb2.Status(code=3, message="bad")
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason="QUOTA", domain="broker.example"))
        bad = any_pb2.Any()
        bad.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="event.id", description="dup"),
        ]))
        status.details.extend([info, bad])
        document = json.loads(status_body(3, "bad", status.SerializeToString()))
        self.assertEqual(document["details"], [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA",
             "domain": "broker.example"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": "event.id", "description": "dup"}]},
        ])

    def test_unknown_detail_type(self) -> None:
        """An unknown detail type is kept as its type URL and base64 bytes."""
        status = status_pb2.Status(code=13)
        status.details.add(type_url="type.example.com/x.Unknown", value=b"\x01\x02")
        self.assertEqual(status_details(status.SerializeToString()), [
            {"@type": "type.example.com/x.Unknown",
             "value": base64.b64encode(b"\x01\x02").decode()},
        ])

    def test_garbage_details(self) -> None:
        """An undecodable trailer gives no details rather than an error."""
        self.assertEqual(status_details(b"\xff\xff\xff"), [])
        self.assertEqual(status_details(None), [])
