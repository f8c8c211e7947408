# -*- test-case-name: tests.test_cloudevents -*-
"""The CloudEvents HTTP protocol binding: HTTP requests in, ``io.cloudevents.v1.CloudEvent``
protobuf messages out.

Core module: imports the standard library, protobuf, the generated messages and the
CloudEvents SDK's binding code; never ``twisted``, ``grpc``, ``txaio`` or ``socket``, and it
never reads the clock.

Three content modes (CloudEvents HTTP binding 1.0.2, section 3):

* **binary**: the attributes are ``ce-*`` headers (percent-encoded UTF-8), ``content-type``
  is ``datacontenttype`` and the body is the data, forwarded byte for byte;
* **structured**: ``content-type: application/cloudevents+json``, the whole event is one
  JSON object (JSON event format 1.0.2), data in ``data`` or ``data_base64``;
* **batch**: ``content-type: application/cloudevents-batch+json``, a JSON array of such
  objects.

The content type alone picks the mode (binding section 3.1: a message with the structured
media type is structured even when it carries ``ce-*`` headers).

What comes from the official SDK (``cloudevents.core``) and what does not.  Speed is not
the reason for any replacement (the SDK's ``from_binary`` is as fast as this module's
whole ``parse_event``); the reasons are the spec:

* binary mode uses :func:`cloudevents.core.bindings.http.from_binary` for the header
  walk, the ``ce-`` prefix, percent-decoding and ``content-type`` -> ``datacontenttype``,
  with two replacements passed in through its own extension points: a data format that
  keeps the body as bytes (the SDK's JSON format would parse JSON bodies only for us to
  serialize them again), and an event factory that validates instead of the SDK's
  ``CloudEvent`` class, which *invents* a missing ``id`` (a UUID), a missing ``time``
  (the clock) and a missing ``specversion`` -- the spec requires rejecting such events.
* ``time`` is parsed here (RFC 3339 section 5.6, into ``Timestamp`` seconds and nanos),
  not by the SDK's ``dateutil.isoparse``: isoparse truncates nanoseconds and accepts
  forms RFC 3339 does not (``20240501T120000Z``, a date alone, no offset).
* structured and batch mode read the JSON themselves: the SDK's ``JSONFormat.read`` takes
  one serialized event (a batch would be parsed twice), crashes with ``TypeError`` on a
  non-string ``time``, and keeps an event that carries both ``data`` and
  ``data_base64``.  The SDK's media types and JSON content-type pattern are reused.
* the mode is chosen by ``content-type`` (binding section 3.1), not by the SDK's
  ``from_http`` rule "any ``ce-`` header means binary".

Mapping to the protobuf format (CloudEvents protobuf format 1.0.2): ``id``, ``source``,
``specversion``, ``type`` are the message's own fields; every other attribute goes into
``attributes`` typed -- ``time`` as ``ce_timestamp``, ``dataschema`` as ``ce_uri``, JSON
booleans as ``ce_boolean``, JSON integers as ``ce_integer`` (int32), strings as
``ce_string``.  Data whose content type is JSON or text becomes ``text_data`` (JSON as
its compact serialization), anything else ``binary_data``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any, Final
from urllib.parse import unquote

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat

from eventgw._proto.cloudevents.v1.cloudevents_pb2 import CloudEvent
from eventgw.errors import InvalidEvent, UnsupportedFormat
from eventgw.exchange import Headers

__all__ = [
    "BATCH_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "AttributeValue",
    "CloudEvent",
    "ContentMode",
    "content_mode",
    "is_batch_content_type",
    "parse_batch",
    "parse_binary",
    "parse_event",
    "parse_structured",
]

AttributeValue = CloudEvent.CloudEventAttributeValue

STRUCTURED_CONTENT_TYPE: Final = JSONFormat.CONTENT_TYPE  # application/cloudevents+json
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
_CE_MEDIA_PREFIX: Final = "application/cloudevents"
SPECVERSION: Final = "1.0"

# Spec section 3.1.1 (naming conventions): lower-case ASCII letters and digits only.  The
# 20-character length is a SHOULD, so longer names are accepted.
_ATTRIBUTE_NAME: Final = re.compile(r"[a-z0-9]+\Z")
# RFC 3986 section 3.1: an absolute URI starts with a scheme.
_ABSOLUTE_URI: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_JSON_TYPE: Final = JSONFormat.JSON_CONTENT_TYPE_PATTERN
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1

_REQUIRED: Final = ("id", "source", "specversion", "type")
# Names that are members of the JSON format, not attributes (JSON format section 3.1).
_RESERVED: Final = frozenset({"data", "data_base64"})


class ContentMode:
    """The three content modes, as plain string constants."""

    BINARY: Final = "binary"
    STRUCTURED: Final = "structured"
    BATCH: Final = "batch"


def _media_type(content_type: bytes | str | None) -> str:
    if content_type is None:
        return ""
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    return content_type.split(";", 1)[0].strip().lower()


def content_mode(content_type: bytes | str | None) -> str:
    """The content mode a request's ``content-type`` selects (binding section 3.1).

    :raises UnsupportedFormat: for a CloudEvents media type other than JSON.
    """
    media = _media_type(content_type)
    if not media.startswith(_CE_MEDIA_PREFIX):
        return ContentMode.BINARY
    if media == STRUCTURED_CONTENT_TYPE:
        return ContentMode.STRUCTURED
    if media == BATCH_CONTENT_TYPE:
        return ContentMode.BATCH
    raise UnsupportedFormat(
        f"content-type: unsupported CloudEvents format {media!r} (use "
        f"{STRUCTURED_CONTENT_TYPE} or {BATCH_CONTENT_TYPE})"
    )


def is_batch_content_type(content_type: bytes | str | None) -> bool:
    """Whether ``content-type`` is the JSON batch media type."""
    return _media_type(content_type) == BATCH_CONTENT_TYPE


def parse_event(headers: Headers, body: bytes) -> CloudEvent:
    """One event in binary or structured mode, chosen by ``content-type``.

    :raises InvalidEvent: naming the missing or bad attribute.
    :raises UnsupportedFormat: for the batch media type or an unknown event format.
    """
    mode = content_mode(_first(headers, b"content-type"))
    if mode == ContentMode.BINARY:
        return parse_binary(headers, body)
    if mode == ContentMode.STRUCTURED:
        return parse_structured(body)
    raise UnsupportedFormat(f"content-type: a batch ({BATCH_CONTENT_TYPE}) is one event here")


def _first(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


# --- binary mode -----------------------------------------------------------------------


class _KeptBody:
    """A CloudEvents SDK data format that keeps the body as the bytes that were sent.

    The gateway forwards data verbatim (``text_data`` / ``binary_data``); parsing a JSON
    body into Python objects would only cost time and lose the exact bytes.
    """

    def read(self, event_factory: Any, data: str | bytes) -> Any:
        raise NotImplementedError("binary mode only")

    def write(self, event: Any) -> bytes:
        raise NotImplementedError("binary mode only")

    def write_data(self, data: dict[str, Any] | str | bytes | None, datacontenttype: str | None
                   ) -> bytes:
        raise NotImplementedError("binary mode only")

    def read_data(self, body: bytes, datacontenttype: str | None
                  ) -> dict[str, Any] | str | bytes | None:
        return body if body else None

    def get_content_type(self) -> str:
        return STRUCTURED_CONTENT_TYPE


class _Collected:
    """What the SDK's binding hands our factory: attributes and data, unvalidated.

    Implements the SDK's ``BaseCloudEvent`` protocol just far enough to be returned by an
    event factory; :func:`parse_binary` reads ``attributes`` and ``data`` directly.
    """

    __slots__ = ("attributes", "data")

    def __init__(self, attributes: dict[str, Any], data: dict[str, Any] | str | bytes | None
                 ) -> None:
        self.attributes = attributes
        self.data = data

    def get_id(self) -> str:
        return str(self.attributes.get("id", ""))

    def get_source(self) -> str:
        return str(self.attributes.get("source", ""))

    def get_type(self) -> str:
        return str(self.attributes.get("type", ""))

    def get_specversion(self) -> str:
        return str(self.attributes.get("specversion", ""))

    def get_datacontenttype(self) -> str | None:
        value = self.attributes.get("datacontenttype")
        return None if value is None else str(value)

    def get_dataschema(self) -> str | None:
        value = self.attributes.get("dataschema")
        return None if value is None else str(value)

    def get_subject(self) -> str | None:
        value = self.attributes.get("subject")
        return None if value is None else str(value)

    def get_time(self) -> datetime | None:
        return None

    def get_extension(self, extension_name: str) -> Any:
        return self.attributes.get(extension_name)

    def get_data(self) -> dict[str, Any] | str | bytes | None:
        return self.data

    def get_attributes(self) -> dict[str, Any]:
        return self.attributes


_KEPT_BODY: Final = _KeptBody()


def parse_binary(headers: Headers, body: bytes) -> CloudEvent:
    """An event in binary mode: ``ce-*`` headers plus the body as data."""
    selected: dict[str, str] = {}
    raw_time: str | None = None
    for name, value in headers:
        if name.startswith(b"ce-"):
            key = name.decode("latin-1")
            attribute = key[3:]
            if key in selected or (attribute == "time" and raw_time is not None):
                raise InvalidEvent(attribute, "given more than once")
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidEvent(
                    attribute, "header value is not UTF-8 (percent-encode it)"
                ) from None
            if attribute == "time":
                # Parsed by _set_time with nanosecond precision, not by isoparse.
                raw_time = text
            else:
                selected[key] = text
        elif name == b"content-type" and "content-type" not in selected:
            selected["content-type"] = value.decode("latin-1")
    message = ce_http.HTTPMessage(headers=selected, body=body)
    collected = ce_http.from_binary(message, _KEPT_BODY, _Collected)
    assert isinstance(collected, _Collected)
    attributes = collected.attributes
    if raw_time is not None:
        attributes["time"] = unquote(raw_time)
    event = _build(attributes, "")
    data = collected.data
    if isinstance(data, bytes):
        _set_raw_data(event, data, attributes.get("datacontenttype"))
    return event


def _set_raw_data(event: CloudEvent, data: bytes, content_type: object) -> None:
    if isinstance(content_type, str) and _is_text(content_type):
        try:
            event.text_data = data.decode("utf-8")
            return
        except UnicodeDecodeError:
            pass
    event.binary_data = data


def _is_text(content_type: str) -> bool:
    media = _media_type(content_type)
    return (
        media.startswith("text/")
        or _JSON_TYPE.match(media) is not None
        or media == "application/xml"
        or media.endswith("+xml")
    )


def _is_json(content_type: object) -> bool:
    # JSON format section 3.1: no datacontenttype means application/json.
    if content_type is None:
        return True
    return isinstance(content_type, str) and _JSON_TYPE.match(_media_type(content_type)) is not None


# --- structured and batch mode ---------------------------------------------------------


def parse_structured(body: bytes) -> CloudEvent:
    """An event in structured mode: one JSON object (JSON event format)."""
    document = _load_json(body, "event")
    if not isinstance(document, dict):
        raise InvalidEvent("event", "a structured event must be a JSON object")
    return _from_json_object(document, "")


def parse_batch(body: bytes) -> list[CloudEvent]:
    """A batch: a JSON array of structured events (JSON event format section 4).

    Errors name the event by index, e.g. ``events[3].id``.  An empty batch is valid.
    """
    document = _load_json(body, "events")
    if not isinstance(document, list):
        raise InvalidEvent("events", "a batch must be a JSON array of events")
    events = []
    for index, item in enumerate(document):
        prefix = f"events[{index}]."
        if not isinstance(item, dict):
            raise InvalidEvent(f"events[{index}]", "each event in a batch must be a JSON object")
        events.append(_from_json_object(item, prefix))
    return events


def _load_json(body: bytes, what: str) -> Any:
    # Decoded here, strictly: json.loads(bytes) would also take UTF-16 and UTF-32 and
    # let UTF-8-encoded surrogates through ("surrogatepass").
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent(what, "the body is not UTF-8 JSON") from None
    try:
        document = json.loads(text)
    except ValueError as e:
        raise InvalidEvent(what, f"the body is not valid JSON ({e})") from None
    except RecursionError:
        raise InvalidEvent(what, "the body is nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        # json.loads turns a lone "\ud800" escape into a lone surrogate, which no
        # protobuf string (UTF-8) can hold; RFC 8259 section 8.2 leaves such strings
        # undefined.  Pairs are fine: they decode to one character.
        try:
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEvent(what, "the body has a lone surrogate \\u escape") from None
    return document


# A \u escape of a UTF-16 surrogate (D800-DFFF), the only way JSON text decoded from
# UTF-8 can produce one.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def _from_json_object(document: dict[str, Any], prefix: str) -> CloudEvent:
    attributes = {key: value for key, value in document.items() if value is not None}
    data = attributes.pop("data", None)
    data_base64 = attributes.pop("data_base64", None)
    event = _build(attributes, prefix)
    if data is not None and data_base64 is not None:
        raise InvalidEvent(prefix + "data_base64", "an event carries data or data_base64, not both")
    if data_base64 is not None:
        if not isinstance(data_base64, str):
            raise InvalidEvent(prefix + "data_base64", "must be a base64 string")
        try:
            event.binary_data = base64.b64decode(data_base64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEvent(prefix + "data_base64", "is not valid base64") from None
    elif data is not None:
        content_type = attributes.get("datacontenttype")
        if isinstance(data, str) and not _is_json(content_type):
            event.text_data = data
        else:
            event.text_data = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return event


# --- validation and conversion ---------------------------------------------------------


def _build(attributes: Mapping[str, Any], prefix: str) -> CloudEvent:
    """Validate the attributes (values as decoded: str, or JSON types) into a message."""
    for name in _REQUIRED:
        value = attributes.get(name)
        if value is None:
            raise InvalidEvent(prefix + name, "missing required attribute")
        if not isinstance(value, str):
            raise InvalidEvent(prefix + name, "must be a string")
        if not value:
            raise InvalidEvent(prefix + name, "must not be empty")
    if attributes["specversion"] != SPECVERSION:
        raise InvalidEvent(
            prefix + "specversion",
            f"unsupported spec version {attributes['specversion']!r} (expected '1.0')",
        )
    event = CloudEvent(
        id=attributes["id"],
        source=attributes["source"],
        spec_version=SPECVERSION,
        type=attributes["type"],
    )
    extra = event.attributes
    for name, value in attributes.items():
        if name in _REQUIRED:
            continue
        converter = _CONVERTERS.get(name)
        if converter is not None:
            converter(extra[name], value, prefix + name)
            continue
        if name in _RESERVED or _ATTRIBUTE_NAME.match(name) is None:
            raise InvalidEvent(
                prefix + name,
                "bad attribute name (lower-case letters a-z and digits 0-9 only)",
            )
        _set_extension(extra[name], value, prefix + name)
    return event


def _set_string(target: AttributeValue, value: object, where: str) -> None:
    if not isinstance(value, str):
        raise InvalidEvent(where, "must be a string")
    if not value:
        raise InvalidEvent(where, "must not be empty")
    target.ce_string = value


def _set_uri(target: AttributeValue, value: object, where: str) -> None:
    if not isinstance(value, str) or _ABSOLUTE_URI.match(value) is None:
        raise InvalidEvent(where, "must be an absolute URI")
    target.ce_uri = value


# RFC 3339 section 5.6 date-time ("t" and "z" may be lower case, fractions any length).
_RFC3339: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"(?:[Zz]|([+-])(\d{2}):(\d{2}))\Z",
    re.ASCII,
)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()


def _set_time(target: AttributeValue, value: object, where: str) -> None:
    # A regular expression and integer arithmetic: protobuf's Timestamp.FromJsonString
    # goes through strptime and costs more than the rest of an event's parsing.
    if not isinstance(value, str):
        raise InvalidEvent(where, "must be an RFC 3339 timestamp string")
    found = _RFC3339.match(value)
    if found is None:
        raise InvalidEvent(where, f"not an RFC 3339 timestamp: {value!r}")
    year, month, day, hour, minute, second = (int(part) for part in found.groups()[:6])
    fraction, sign, offset_hours, offset_minutes = found.groups()[6:]
    try:
        days = date(year, month, day).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        raise InvalidEvent(where, f"not a calendar date: {value!r}") from None
    # second 60 is a leap second (RFC 3339 section 5.7); Timestamp has none, so it is
    # the next second, as in leap smearing's end result.
    if hour > 23 or minute > 59 or second > 60:
        raise InvalidEvent(where, f"time of day out of range: {value!r}")
    seconds = days * 86400 + hour * 3600 + minute * 60 + second
    if sign is not None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            raise InvalidEvent(where, f"offset out of range: {value!r}")
        offset = int(offset_hours) * 3600 + int(offset_minutes) * 60
        seconds += -offset if sign == "+" else offset
    # Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise InvalidEvent(where, f"outside the years 1 to 9999: {value!r}")
    stamp = target.ce_timestamp
    stamp.seconds = seconds
    # Digits past nanoseconds are truncated (Timestamp's resolution).
    stamp.nanos = int((fraction or "0")[:9].ljust(9, "0"))


_MIN_SECONDS: Final = -62135596800
_MAX_SECONDS: Final = 253402300799


def _set_extension(target: AttributeValue, value: object, where: str) -> None:
    # JSON types map onto the CloudEvents type system (spec section 3.1.6).
    if isinstance(value, bool):
        target.ce_boolean = value
    elif isinstance(value, int):
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise InvalidEvent(where, "integer out of the 32-bit range")
        target.ce_integer = value
    elif isinstance(value, str):
        target.ce_string = value
    else:
        raise InvalidEvent(where, "must be a string, a boolean or a 32-bit integer")


_CONVERTERS: Final[dict[str, Callable[[AttributeValue, object, str], None]]] = {
    "datacontenttype": _set_string,
    "subject": _set_string,
    "dataschema": _set_uri,
    "time": _set_time,
}
