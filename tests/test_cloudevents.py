# -*- test-case-name: tests.test_cloudevents -*-
# mypy: disable-error-code="no-untyped-call"
"""Tests for eventgw.events.cloudevents: the CloudEvents HTTP binding, without sockets."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from eventgw.errors import InvalidEvent, UnsupportedFormat
from eventgw.events.cloudevents import (
    CloudEvent,
    ContentMode,
    content_mode,
    is_batch_content_type,
    parse_batch,
    parse_binary,
    parse_event,
    parse_structured,
)

REQUIRED: list[tuple[bytes, bytes]] = [
    (b"ce-id", b"A234-1234-1234"),
    (b"ce-source", b"/mycontext/subcontext"),
    (b"ce-type", b"com.example.someevent"),
    (b"ce-specversion", b"1.0"),
]


def binary(extra: list[tuple[bytes, bytes]] | None = None, *, drop: bytes | None = None,
           ) -> list[tuple[bytes, bytes]]:
    """The required ce- headers, minus ``drop``, plus ``extra``."""
    return [(k, v) for k, v in REQUIRED if k != drop] + list(extra or [])


def structured(**fields: Any) -> bytes:
    document: dict[str, Any] = {
        "id": "A234-1234-1234",
        "source": "/mycontext/subcontext",
        "type": "com.example.someevent",
        "specversion": "1.0",
    }
    for name, value in fields.items():
        if value is _DROP:
            document.pop(name, None)
        else:
            document[name] = value
    return json.dumps(document).encode()


_DROP = object()


def timestamp(text: str) -> Timestamp:
    value = Timestamp()
    value.FromJsonString(text)
    return value


class ContentModeTests(SynchronousTestCase):
    """The content type alone picks the mode."""

    def test_modes(self) -> None:
        """Structured and batch media types (case and parameters aside); all else binary."""
        self.assertEqual(content_mode(b"application/cloudevents+json"), ContentMode.STRUCTURED)
        self.assertEqual(
            content_mode(b"Application/CloudEvents+JSON; charset=utf-8"), ContentMode.STRUCTURED
        )
        self.assertEqual(content_mode(b"application/cloudevents-batch+json"), ContentMode.BATCH)
        self.assertEqual(content_mode(b"application/json"), ContentMode.BINARY)
        self.assertEqual(content_mode(None), ContentMode.BINARY)
        self.assertTrue(is_batch_content_type("application/cloudevents-batch+json"))
        self.assertFalse(is_batch_content_type(b"application/cloudevents+json"))

    def test_other_event_format_is_unsupported(self) -> None:
        """A CloudEvents event format other than JSON is a 415, not binary mode."""
        error = self.assertRaises(UnsupportedFormat, content_mode, b"application/cloudevents+avro")
        self.assertEqual(error.http_status, 415)

    def test_batch_is_not_one_event(self) -> None:
        """parse_event refuses the batch media type."""
        self.assertRaises(
            UnsupportedFormat, parse_event,
            [(b"content-type", b"application/cloudevents-batch+json")], b"[]",
        )

    def test_structured_wins_over_ce_headers(self) -> None:
        """With the structured media type, ce- headers are not attributes (binding 3.1)."""
        event = parse_event(
            [(b"content-type", b"application/cloudevents+json"), (b"ce-id", b"header-id")],
            structured(),
        )
        self.assertEqual(event.id, "A234-1234-1234")


class BinaryModeTests(SynchronousTestCase):
    """Binary mode: ce- headers are attributes, the body is the data."""

    def test_required_attributes(self) -> None:
        """id, source, type and specversion become the message's own fields."""
        event = parse_binary(binary(), b"")
        self.assertEqual(event.id, "A234-1234-1234")
        self.assertEqual(event.source, "/mycontext/subcontext")
        self.assertEqual(event.type, "com.example.someevent")
        self.assertEqual(event.spec_version, "1.0")
        self.assertEqual(dict(event.attributes), {})
        self.assertIsNone(event.WhichOneof("data"))

    def test_typed_attributes(self) -> None:
        """time is a timestamp (nanoseconds kept), dataschema a URI, the rest strings."""
        event = parse_binary(binary([
            (b"ce-time", b"2018-04-05T17:31:00.123456789Z"),
            (b"ce-dataschema", b"https://example.com/schema/v1"),
            (b"ce-subject", b"123"),
            (b"ce-comexampleextension1", b"value"),
            (b"content-type", b"application/json"),
        ]), b"{}")
        attributes = event.attributes
        self.assertEqual(
            attributes["time"].ce_timestamp, timestamp("2018-04-05T17:31:00.123456789Z")
        )
        self.assertEqual(attributes["time"].ce_timestamp.nanos, 123456789)
        self.assertEqual(attributes["dataschema"].ce_uri, "https://example.com/schema/v1")
        self.assertEqual(attributes["subject"].ce_string, "123")
        self.assertEqual(attributes["comexampleextension1"].ce_string, "value")
        self.assertEqual(attributes["datacontenttype"].ce_string, "application/json")

    def test_time_with_offset_and_lower_case(self) -> None:
        """An offset is normalised to UTC; RFC 3339's lower-case t and z are accepted."""
        event = parse_binary(binary([(b"ce-time", b"2018-04-05t19:31:00+02:00")]), b"")
        self.assertEqual(event.attributes["time"].ce_timestamp, timestamp("2018-04-05T17:31:00Z"))

    def test_time_details(self) -> None:
        """Leap seconds roll over, digits past nanoseconds are truncated, the range ends
        are kept."""
        cases = {
            b"2016-12-31T23:59:60Z": "2017-01-01T00:00:00Z",
            b"2018-04-05T17:31:00.1234567891Z": "2018-04-05T17:31:00.123456789Z",
            b"0001-01-01T00:00:00Z": "0001-01-01T00:00:00Z",
            b"9999-12-31T23:59:59.999999999Z": "9999-12-31T23:59:59.999999999Z",
            b"2018-04-05T00:30:00-01:30": "2018-04-05T02:00:00Z",
        }
        for given_time, expected in cases.items():
            event = parse_binary(binary([(b"ce-time", given_time)]), b"")
            self.assertEqual(event.attributes["time"].ce_timestamp, timestamp(expected), given_time)

    @settings(max_examples=300, deadline=None)
    @given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
           st.integers(0, 999_999_999), st.integers(-23 * 60 - 59, 23 * 60 + 59))
    def test_time_agrees_with_protobuf(self, moment: datetime, nanos: int, offset: int) -> None:
        """The time parser gives what protobuf's own RFC 3339 parser gives."""
        sign = "-" if offset < 0 else "+"
        clock = moment.strftime("%Y-%m-%dT%H:%M:%S").rjust(19, "0")
        text = f"{clock}.{nanos:09d}{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
        expected = Timestamp()
        try:
            expected.FromJsonString(text)
        except ValueError:
            self.assertRaises(InvalidEvent, parse_binary, binary([(b"ce-time", text.encode())]),
                              b"")
            return
        event = parse_binary(binary([(b"ce-time", text.encode())]), b"")
        self.assertEqual(event.attributes["time"].ce_timestamp, expected, text)

    def test_percent_decoding(self) -> None:
        """Header values are percent-decoded as UTF-8 (binding 3.1.3.2)."""
        event = parse_binary(binary([
            (b"ce-subject", b"caf%C3%A9%20au%20%22lait%22%25"),
            (b"ce-time", b"2018-04-05T17%3A31%3A00Z"),
        ]), b"")
        self.assertEqual(event.attributes["subject"].ce_string, 'café au "lait"%')
        self.assertEqual(event.attributes["time"].ce_timestamp, timestamp("2018-04-05T17:31:00Z"))

    def test_json_data_is_text_as_sent(self) -> None:
        """A JSON body is text_data, byte for byte (not re-serialised)."""
        body = b'{ "b": 1,\n  "a": [1, 2] }'
        event = parse_binary(binary([(b"content-type", b"application/json")]), body)
        self.assertEqual(event.text_data, body.decode())

    def test_json_suffix_and_text_types_are_text(self) -> None:
        """+json, text/* and XML bodies are text_data."""
        for content_type in (b"application/vnd.foo+json; charset=utf-8", b"text/plain",
                             b"text/csv", b"application/xml", b"application/atom+xml"):
            event = parse_binary(binary([(b"content-type", content_type)]), "héllo".encode())
            self.assertEqual(event.text_data, "héllo", content_type)

    def test_binary_data(self) -> None:
        """Other content types, or none, give binary_data."""
        body = bytes(range(256))
        event = parse_binary(binary([(b"content-type", b"application/octet-stream")]), body)
        self.assertEqual(event.binary_data, body)
        event = parse_binary(binary(), b"plain")
        self.assertEqual(event.binary_data, b"plain")
        self.assertNotIn("datacontenttype", event.attributes)

    def test_text_type_that_is_not_utf8_is_binary(self) -> None:
        """A text content type with a non-UTF-8 body is kept as binary_data."""
        event = parse_binary(binary([(b"content-type", b"text/plain")]), b"\xff\xfe")
        self.assertEqual(event.binary_data, b"\xff\xfe")

    def test_empty_body_is_no_data(self) -> None:
        """No body, no data."""
        event = parse_binary(binary([(b"content-type", b"application/json")]), b"")
        self.assertIsNone(event.WhichOneof("data"))

    def test_missing_required_attribute(self) -> None:
        """Each missing required attribute is an error naming it (the SDK would invent
        id and specversion)."""
        for name, _ in REQUIRED:
            attribute = name.decode()[3:]
            error = self.assertRaises(InvalidEvent, parse_binary, binary(drop=name), b"")
            self.assertEqual(error.attribute, attribute)
            self.assertIn(attribute, error.message)
            self.assertEqual(error.http_status, 400)

    def test_empty_required_attribute(self) -> None:
        """An empty required attribute is an error naming it."""
        for name, _ in REQUIRED:
            headers = binary([(name, b"")], drop=name)
            error = self.assertRaises(InvalidEvent, parse_binary, headers, b"")
            self.assertEqual(error.attribute, name.decode()[3:])

    def test_bad_specversion(self) -> None:
        """Only spec version 1.0 is accepted."""
        headers = binary([(b"ce-specversion", b"0.3")], drop=b"ce-specversion")
        error = self.assertRaises(InvalidEvent, parse_binary, headers, b"")
        self.assertEqual(error.attribute, "specversion")

    def test_bad_time(self) -> None:
        """Times that are not RFC 3339 are errors naming time (isoparse would take some)."""
        for value in (b"yesterday", b"2018-04-05", b"20180405T173100Z", b"2018-04-05T17:31:00",
                      b"2018-02-30T00:00:00Z", b"2018-04-05T24:00:00Z", b"2018-04-05T17:60:00Z",
                      b"2018-04-05T17:31:00+24:00", b"0000-12-31T00:00:00Z",
                      b"9999-12-31T23:59:59-01:00", b"2018-04-05T17:31:00.Z",
                      "٢٠١٨-04-05T17:31:00Z".encode()):
            error = self.assertRaises(
                InvalidEvent, parse_binary, binary([(b"ce-time", value)]), b""
            )
            self.assertEqual(error.attribute, "time", value)

    def test_bad_dataschema(self) -> None:
        """dataschema must be an absolute URI."""
        error = self.assertRaises(
            InvalidEvent, parse_binary, binary([(b"ce-dataschema", b"/relative")]), b""
        )
        self.assertEqual(error.attribute, "dataschema")

    def test_empty_subject(self) -> None:
        """subject, when present, must not be empty."""
        error = self.assertRaises(
            InvalidEvent, parse_binary, binary([(b"ce-subject", b"")]), b""
        )
        self.assertEqual(error.attribute, "subject")

    def test_bad_extension_names(self) -> None:
        """Extension names are lower-case letters and digits; 'data' is reserved."""
        for name in (b"ce-my_ext", b"ce-my-ext", b"ce-", b"ce-data", "ce-é".encode()):
            error = self.assertRaises(
                InvalidEvent, parse_binary, binary([(name, b"x")]), b""
            )
            self.assertEqual(error.attribute, name.decode("latin-1")[3:].lower(), name)

    def test_long_extension_name_is_accepted(self) -> None:
        """Names over 20 characters are only discouraged (a SHOULD), so they pass."""
        event = parse_binary(binary([(b"ce-" + b"a" * 40, b"x")]), b"")
        self.assertEqual(event.attributes["a" * 40].ce_string, "x")

    def test_duplicate_header(self) -> None:
        """An attribute given twice is ambiguous: an error naming it."""
        for name in (b"ce-subject", b"ce-time"):
            headers = binary([(name, b"2018-04-05T17:31:00Z"), (name, b"2018-04-05T17:31:00Z")])
            error = self.assertRaises(InvalidEvent, parse_binary, headers, b"")
            self.assertEqual(error.attribute, name.decode()[3:])

    def test_header_not_utf8(self) -> None:
        """A raw non-UTF-8 header value is an error naming the attribute."""
        error = self.assertRaises(
            InvalidEvent, parse_binary, binary([(b"ce-subject", b"\xff")]), b""
        )
        self.assertEqual(error.attribute, "subject")

    def test_other_headers_ignored(self) -> None:
        """Headers without the ce- prefix are not attributes."""
        event = parse_binary(binary([(b"x-ce-foo", b"1"), (b"traceparent", b"00-x")]), b"")
        self.assertEqual(dict(event.attributes), {})


class StructuredModeTests(SynchronousTestCase):
    """Structured mode: one JSON object."""

    def test_attributes_and_types(self) -> None:
        """JSON strings, booleans and integers map to their attribute value types."""
        event = parse_structured(structured(
            time="2018-04-05T17:31:00Z",
            dataschema="urn:example:schema",
            subject="s",
            datacontenttype="application/json",
            strext="text",
            boolext=True,
            intext=-42,
            bigext=2**31 - 1,
        ))
        attributes = event.attributes
        self.assertEqual(attributes["time"].ce_timestamp, timestamp("2018-04-05T17:31:00Z"))
        self.assertEqual(attributes["dataschema"].ce_uri, "urn:example:schema")
        self.assertEqual(attributes["subject"].ce_string, "s")
        self.assertEqual(attributes["strext"].ce_string, "text")
        self.assertIs(attributes["boolext"].ce_boolean, True)
        self.assertEqual(attributes["boolext"].WhichOneof("attr"), "ce_boolean")
        self.assertEqual(attributes["intext"].ce_integer, -42)
        self.assertEqual(attributes["bigext"].ce_integer, 2**31 - 1)

    def test_json_data(self) -> None:
        """JSON data (datacontenttype JSON or absent) is text_data, compactly serialised."""
        event = parse_structured(structured(data={"a": [1, "é"]}))
        self.assertEqual(event.text_data, '{"a":[1,"é"]}')
        event = parse_structured(structured(data="quoted", datacontenttype="application/json"))
        self.assertEqual(event.text_data, '"quoted"')
        event = parse_structured(structured(data=False))
        self.assertEqual(event.text_data, "false")

    def test_text_data(self) -> None:
        """A string with a non-JSON content type is the text itself."""
        event = parse_structured(structured(data="<x/>", datacontenttype="text/xml"))
        self.assertEqual(event.text_data, "<x/>")

    def test_data_base64(self) -> None:
        """data_base64 is binary_data."""
        payload = bytes(range(200))
        event = parse_structured(structured(data_base64=base64.b64encode(payload).decode()))
        self.assertEqual(event.binary_data, payload)

    def test_data_and_data_base64(self) -> None:
        """Both data and data_base64 is an error naming data_base64."""
        error = self.assertRaises(
            InvalidEvent, parse_structured, structured(data=1, data_base64="AA==")
        )
        self.assertEqual(error.attribute, "data_base64")

    def test_bad_base64(self) -> None:
        """data_base64 must be valid base64 text."""
        for value in ("not base64!", 12):
            error = self.assertRaises(
                InvalidEvent, parse_structured, structured(data_base64=value)
            )
            self.assertEqual(error.attribute, "data_base64")

    def test_null_data_and_attributes_are_absent(self) -> None:
        """JSON null means absent."""
        event = parse_structured(structured(data=None, subject=None))
        self.assertIsNone(event.WhichOneof("data"))
        self.assertNotIn("subject", event.attributes)

    def test_missing_required_attribute(self) -> None:
        """Each missing required attribute is an error naming it."""
        for name in ("id", "source", "type", "specversion"):
            error = self.assertRaises(
                InvalidEvent, parse_structured, structured(**{name: _DROP})
            )
            self.assertEqual(error.attribute, name)

    def test_required_attribute_wrong_type(self) -> None:
        """Required attributes are strings."""
        for name in ("id", "source", "type", "specversion"):
            error = self.assertRaises(InvalidEvent, parse_structured, structured(**{name: 5}))
            self.assertEqual(error.attribute, name)

    def test_bad_attribute_values(self) -> None:
        """Each bad value is an error naming its attribute."""
        cases: dict[str, Any] = {
            "time": 1522949460,
            "dataschema": "no scheme",
            "datacontenttype": 7,
            "subject": "",
            "floatext": 1.5,
            "bigext": 2**31,
            "smallext": -(2**31) - 1,
            "listext": [1],
            "objext": {"a": 1},
        }
        for name, value in cases.items():
            error = self.assertRaises(
                InvalidEvent, parse_structured, structured(**{name: value})
            )
            self.assertEqual(error.attribute, name)

    def test_bad_extension_name(self) -> None:
        """Upper case or punctuation in a name is an error naming it."""
        for name in ("myExt", "my_ext", "my.ext"):
            error = self.assertRaises(
                InvalidEvent, parse_structured, structured(**{name: "x"})
            )
            self.assertEqual(error.attribute, name)

    def test_not_json(self) -> None:
        """A body that is not a JSON object is an error naming the event."""
        for body in (b"{", b"[]", b'"x"', b"\xff"):
            error = self.assertRaises(InvalidEvent, parse_structured, body)
            self.assertEqual(error.attribute, "event", body)


class BatchModeTests(SynchronousTestCase):
    """Batch mode: a JSON array of structured events."""

    def test_batch(self) -> None:
        """Each element becomes one event, in order."""
        body = json.dumps([
            json.loads(structured(id=str(index), data={"n": index})) for index in range(3)
        ]).encode()
        events = parse_batch(body)
        self.assertEqual([event.id for event in events], ["0", "1", "2"])
        self.assertEqual(events[2].text_data, '{"n":2}')

    def test_empty_batch(self) -> None:
        """An empty batch is valid."""
        self.assertEqual(parse_batch(b"[]"), [])

    def test_error_names_the_event(self) -> None:
        """An error names the event's index and attribute."""
        body = json.dumps([json.loads(structured()), json.loads(structured(type=_DROP))])
        error = self.assertRaises(InvalidEvent, parse_batch, body.encode())
        self.assertEqual(error.attribute, "events[1].type")

    def test_not_an_array(self) -> None:
        """A batch is an array of objects."""
        error = self.assertRaises(InvalidEvent, parse_batch, structured())
        self.assertEqual(error.attribute, "events")
        error = self.assertRaises(InvalidEvent, parse_batch, b"[1]")
        self.assertEqual(error.attribute, "events[0]")
        error = self.assertRaises(InvalidEvent, parse_batch, b"[")
        self.assertEqual(error.attribute, "events")


# --- property-based: the SDK writes, the gateway reads ---------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)
_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda name: name not in {"id", "source", "type", "specversion", "time", "subject",
                              "dataschema", "datacontenttype", "data"}
)
_times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(_text, children, max_size=3),
    max_leaves=8,
)
_data = st.one_of(
    st.just(("none", None, None)),
    st.tuples(st.just("json"), st.dictionaries(_text, _json_values, max_size=4),
              st.just("application/json")),
    st.tuples(st.just("text"), _text, st.just("text/plain; charset=utf-8")),
    st.tuples(st.just("binary"), st.binary(min_size=1, max_size=64),
              st.just("application/octet-stream")),
)


@st.composite
def sdk_events(draw: st.DrawFn) -> tuple[SdkEvent, str]:
    attributes: dict[str, Any] = {
        "id": draw(_text),
        "source": draw(_text),
        "type": draw(_text),
        "specversion": "1.0",
        "time": draw(_times),
    }
    if draw(st.booleans()):
        attributes["subject"] = draw(_text)
    if draw(st.booleans()):
        attributes["dataschema"] = "https://example.com/" + draw(st.from_regex(r"[a-z]{0,8}"))
    attributes.update(draw(st.dictionaries(_names, _text, max_size=4)))
    kind, data, content_type = draw(_data)
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    return SdkEvent(attributes, data), kind


def _headers(message: ce_http.HTTPMessage) -> list[tuple[bytes, bytes]]:
    return [(key.lower().encode(), value.encode()) for key, value in message.headers.items()]


class RoundTripTests(SynchronousTestCase):
    """Random valid events, written by the official SDK, read back by the gateway."""

    def assert_same_event(self, sdk: SdkEvent, kind: str, event: CloudEvent) -> None:
        attributes = dict(sdk.get_attributes())
        self.assertEqual(event.id, attributes.pop("id"))
        self.assertEqual(event.source, attributes.pop("source"))
        self.assertEqual(event.type, attributes.pop("type"))
        self.assertEqual(event.spec_version, attributes.pop("specversion"))
        expected_time = Timestamp()
        expected_time.FromDatetime(attributes.pop("time"))
        self.assertEqual(event.attributes["time"].ce_timestamp, expected_time)
        if "dataschema" in attributes:
            self.assertEqual(event.attributes["dataschema"].ce_uri, attributes.pop("dataschema"))
        seen = {name: value.ce_string for name, value in event.attributes.items()
                if name not in ("time", "dataschema")}
        self.assertEqual(seen, attributes)
        data = sdk.get_data()
        if kind == "none":
            self.assertIsNone(event.WhichOneof("data"))
        elif kind == "json":
            self.assertEqual(json.loads(event.text_data), data)
        elif kind == "text":
            self.assertEqual(event.text_data, data)
        else:
            self.assertEqual(event.binary_data, data)

    @settings(max_examples=150, deadline=None)
    @given(sdk_events())
    def test_binary_mode(self, drawn: tuple[SdkEvent, str]) -> None:
        """Binary mode keeps every attribute, its type, and the data."""
        sdk, kind = drawn
        message = ce_http.to_binary(sdk, JSONFormat())
        self.assert_same_event(sdk, kind, parse_event(_headers(message), message.body))

    @settings(max_examples=150, deadline=None)
    @given(sdk_events())
    def test_structured_mode(self, drawn: tuple[SdkEvent, str]) -> None:
        """Structured mode keeps every attribute, its type, and the data; the message
        equals the one binary mode gives, apart from how JSON data is spaced."""
        sdk, kind = drawn
        message = ce_http.to_structured(sdk, JSONFormat())
        event = parse_event(_headers(message), message.body)
        self.assert_same_event(sdk, kind, event)
        via_binary = ce_http.to_binary(sdk, JSONFormat())
        other = parse_event(_headers(via_binary), via_binary.body)
        if kind == "json":
            other.text_data = event.text_data
        self.assertEqual(event, other)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(sdk_events(), max_size=5))
    def test_batch_mode(self, drawn: list[tuple[SdkEvent, str]]) -> None:
        """A batch of SDK-written events reads back event by event."""
        body = b"[" + b",".join(JSONFormat().write(sdk) for sdk, _ in drawn) + b"]"
        events = parse_batch(body)
        self.assertEqual(len(events), len(drawn))
        for (sdk, kind), event in zip(drawn, events, strict=True):
            self.assert_same_event(sdk, kind, event)
