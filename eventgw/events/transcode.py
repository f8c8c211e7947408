# -*- test-case-name: tests.test_transcode -*-
"""HTTP/JSON <-> gRPC transcoding driven by ``google.api.http`` annotations.

Core module: imports the standard library, protobuf (descriptors, ``json_format``), the
generated ``google.api``/``google.rpc`` messages and :mod:`eventgw.events.cloudevents`; never
``twisted``, ``grpc``, ``txaio`` or ``socket``.

Size: a little over 600 lines: the path-template compiler, the request builder and
the response/error rendering share the compiled route type; a third of the module is
the docs of what ``google/api/http.proto`` allows and what is supported.

At start, :meth:`RouteTable.from_services` reads every method's ``google.api.http`` rule
(and its ``additional_bindings``) from the compiled descriptors and compiles the path
templates, the way grpc-gateway and Envoy's gRPC-JSON transcoder do -- so an annotated
method added to the proto is an HTTP route without gateway code.  Supported, per
``google/api/http.proto``:

* path templates with literals, ``*``, ``**``, variables ``{field.path}`` and
  ``{field.path=segments/*/with/**}``, and a trailing ``:verb``;
* ``body: "*"`` (the whole request from the JSON body), ``body: "field"`` (one field),
  or no body; ``response_body`` selecting one response field;
* query parameters into the request fields not bound by the path or body (dotted paths,
  repeated fields by repetition); a bad value is a 400 naming the parameter, a parameter
  that names no field is ignored (as grpc-gateway does);
* the proto3 JSON mapping (``google.protobuf.json_format``) both ways.

One extension of the mapping: a body field of type ``io.cloudevents.v1.CloudEvent`` is
read with the CloudEvents HTTP binding (binary or structured mode), and a repeated one
with the batch mode.  Routes that share a verb and template are told apart by the
request's content type (the batch media type picks the repeated-CloudEvent route).

gRPC failures become ``google.rpc.Status`` JSON (:func:`status_body`), with the
``details`` decoded from ``grpc-status-details-bin``.
"""

from __future__ import annotations

import base64
import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast
from urllib.parse import parse_qsl, unquote

from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]

from eventgw.errors import (
    BadRequest,
    MethodNotAllowed,
    RouteNotFound,
    UnsupportedMediaType,
    error_body,
)
from eventgw.events import cloudevents

__all__ = [
    "BodyKind",
    "HttpRoute",
    "PathTemplate",
    "RouteMatch",
    "RouteTable",
    "TemplateError",
    "build_request",
    "mapping_summary",
    "path_of",
    "query_of",
    "response_body",
    "status_body",
    "status_details",
]

# Registers google.rpc.ErrorInfo, BadRequest, RetryInfo... in the default pool, so that
# the details of a broker's error are rendered as JSON rather than opaque bytes.
_ERROR_DETAIL_TYPES: Final = error_details_pb2.DESCRIPTOR

_CLOUDEVENT: Final = cloudevents.CloudEvent.DESCRIPTOR.full_name  # io.cloudevents.v1.CloudEvent
_HTTP_METHODS: Final = ("get", "put", "post", "delete", "patch")


class TemplateError(ValueError):
    """A ``google.api.http`` rule the gateway cannot compile (a bug in the proto)."""


class BodyKind(enum.Enum):
    """How the request body becomes (part of) the request message."""

    NONE = "none"  # no body rule: the body is ignored
    JSON = "json"  # proto3 JSON, of the whole message ("*") or of one field
    CLOUDEVENT = "cloudevent"  # CloudEvents HTTP binding, binary or structured mode
    CLOUDEVENT_BATCH = "cloudevent_batch"  # CloudEvents batch mode


# --- path templates --------------------------------------------------------------------

_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_LITERAL: Final = re.compile(r"[^/{}*:]+\Z")


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A compiled ``google.api.http`` path template.

    :ivar text: the template as written.
    :ivar variables: the field paths bound by the template, in order.
    """

    text: str
    variables: tuple[str, ...]
    _pattern: re.Pattern[str] = field(repr=False, compare=False)
    _multi: frozenset[str] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        """Compile ``/a/{b.c=x/*}/**:verb``; raise :class:`TemplateError` when malformed."""
        if not text.startswith("/"):
            raise TemplateError(f"{text!r}: a template starts with '/'")
        body, verb = _split_verb(text)
        variables: list[str] = []
        multi: set[str] = set()
        pattern = ["/", _segments_pattern(body[1:], text, variables, multi, top=True)]
        if verb is not None:
            pattern.append(":" + re.escape(verb))
        compiled = re.compile("".join(pattern) + r"\Z", re.DOTALL)
        return cls(text, tuple(variables), compiled, frozenset(multi))

    def match(self, path: str) -> dict[str, str] | None:
        """The variables' values (percent-decoded) if ``path`` matches, else ``None``.

        A single-segment variable decodes every escape (``%2F`` becomes ``/``); a
        multi-segment one keeps ``%2F`` as is, so its segments stay distinguishable
        (``google/api/http.proto``, "Path template syntax").
        """
        found = self._pattern.match(path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for index, name in enumerate(self.variables):
            raw = found.group(f"v{index}")
            if name in self._multi:
                values[name] = "%2F".join(unquote(part) for part in raw.split("%2F"))
            else:
                values[name] = unquote(raw)
        return values


def _split_verb(text: str) -> tuple[str, str | None]:
    # The verb is a ':' after the last '/' and outside any {...}.
    depth = 0
    last_colon = -1
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "/" and depth == 0:
            last_colon = -1
        elif char == ":" and depth == 0:
            last_colon = index
    if last_colon == -1:
        return text, None
    verb = text[last_colon + 1 :]
    if not verb or _LITERAL.match(verb) is None:
        raise TemplateError(f"{text!r}: bad verb {verb!r}")
    return text[:last_colon], verb


def _split_top(text: str) -> list[str]:
    # Split on '/' outside braces.
    parts: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "/" and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _segments_pattern(
    text: str, template: str, variables: list[str], multi: set[str], *, top: bool
) -> str:
    pieces: list[str] = []
    segments = _split_top(text)
    for position, segment in enumerate(segments):
        if segment == "**":
            if position != len(segments) - 1:
                raise TemplateError(f"{template!r}: '**' must be the last segment")
            pieces.append(".+")
        elif segment == "*":
            pieces.append("[^/]+")
        elif segment.startswith("{") and segment.endswith("}"):
            if not top:
                raise TemplateError(f"{template!r}: nested variables")
            name, _, sub = segment[1:-1].partition("=")
            if _IDENT.match(name) is None:
                raise TemplateError(f"{template!r}: bad field path {name!r}")
            if name in variables:
                raise TemplateError(f"{template!r}: {name!r} bound twice")
            sub = sub or "*"
            if "**" in sub.split("/") and position != len(segments) - 1:
                raise TemplateError(f"{template!r}: '**' must be the last segment")
            index = len(variables)
            variables.append(name)
            if "**" in sub.split("/") or "/" in sub:
                multi.add(name)
            inner = _segments_pattern(sub, template, variables, multi, top=False)
            pieces.append(f"(?P<v{index}>{inner})")
        elif segment and _LITERAL.match(segment) is not None:
            pieces.append(re.escape(segment))
        else:
            raise TemplateError(f"{template!r}: bad segment {segment!r}")
    return "/".join(pieces)


# --- routes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpRoute:
    """One HTTP binding of one gRPC method.

    :ivar grpc_path: ``/package.Service/Method``, as gRPC puts it on the wire.
    :ivar http_method: upper-case, e.g. ``"POST"``.
    :ivar body: the rule's ``body`` (``""`` none, ``"*"``, or a top-level field name).
    :ivar response_field: the rule's ``response_body`` (``""`` for the whole message).
    """

    method: MethodDescriptor
    grpc_path: str
    http_method: str
    template: PathTemplate
    body: str
    response_field: str
    body_kind: BodyKind
    request_class: type[Message] = field(repr=False)
    response_class: type[Message] = field(repr=False)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A route chosen for a request, with the path variables it bound."""

    route: HttpRoute
    variables: dict[str, str]


def _rule_routes(method: MethodDescriptor, rule: http_pb2.HttpRule) -> list[HttpRoute]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise TemplateError(f"{method.full_name}: google.api.http rule without a pattern")
    if kind == "custom":
        http_method = rule.custom.kind.upper()
        path = rule.custom.path
    else:
        http_method = kind.upper()
        path = getattr(rule, kind)
    request = method.input_type
    body_kind = _body_kind(method, request, rule.body)
    if rule.response_body and rule.response_body not in method.output_type.fields_by_name:
        raise TemplateError(
            f"{method.full_name}: response_body {rule.response_body!r} is not a field"
        )
    route = HttpRoute(
        method=method,
        grpc_path=f"/{method.containing_service.full_name}/{method.name}",
        http_method=http_method,
        template=PathTemplate.parse(path),
        body=rule.body,
        response_field=rule.response_body,
        body_kind=body_kind,
        request_class=message_factory.GetMessageClass(request),
        response_class=message_factory.GetMessageClass(method.output_type),
    )
    for name in route.template.variables:
        _field_chain(request, name.split("."), f"{method.full_name}: {path}")
    routes = [route]
    for extra in rule.additional_bindings:
        if extra.additional_bindings:
            raise TemplateError(f"{method.full_name}: nested additional_bindings")
        routes.extend(_rule_routes(method, extra))
    return routes


def _body_kind(method: MethodDescriptor, request: Descriptor, body: str) -> BodyKind:
    if not body:
        return BodyKind.NONE
    if body == "*":
        return BodyKind.JSON
    target = request.fields_by_name.get(body)
    if target is None:
        raise TemplateError(f"{method.full_name}: body {body!r} is not a field")
    if target.message_type is not None and target.message_type.full_name == _CLOUDEVENT:
        if _is_repeated(target):
            return BodyKind.CLOUDEVENT_BATCH
        return BodyKind.CLOUDEVENT
    return BodyKind.JSON


def _is_repeated(target: FieldDescriptor) -> bool:
    return bool(target.is_repeated)


class RouteTable:
    """Every HTTP binding of a set of services, matched in declaration order."""

    def __init__(self, routes: Iterable[HttpRoute]) -> None:
        self.routes: tuple[HttpRoute, ...] = tuple(routes)

    @classmethod
    def from_services(cls, services: Iterable[ServiceDescriptor]) -> RouteTable:
        """Read the ``google.api.http`` option of every method; unannotated ones are skipped.

        :raises TemplateError: for a rule that cannot be compiled.
        """
        routes: list[HttpRoute] = []
        for service in services:
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    continue  # a JSON request/response has exactly one message
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                routes.extend(_rule_routes(method, options.Extensions[annotations_pb2.http]))
        return cls(routes)

    def allowed_methods(self, path: str) -> list[str]:
        """The HTTP methods some route serves at ``path``, in declaration order."""
        allowed: list[str] = []
        for route in self.routes:
            if route.http_method not in allowed and route.template.match(path) is not None:
                allowed.append(route.http_method)
        return allowed

    def match(self, http_method: str, path: str, content_type: bytes | None) -> RouteMatch:
        """The route for a request.

        :raises RouteNotFound: no template matches ``path``.
        :raises MethodNotAllowed: templates match, none for ``http_method``.
        :raises UnsupportedMediaType: none of them takes ``content_type``.
        """
        candidates: list[RouteMatch] = []
        path_matched = False
        for route in self.routes:
            variables = route.template.match(path)
            if variables is None:
                continue
            path_matched = True
            if route.http_method == http_method:
                candidates.append(RouteMatch(route, variables))
        if not candidates:
            if not path_matched:
                raise RouteNotFound(f"no route for {path}")
            allowed = self.allowed_methods(path)
            raise MethodNotAllowed(
                f"method {http_method} not allowed for {path} (allowed: {', '.join(allowed)})",
                allowed,
            )
        return _by_content_type(candidates, content_type)


def _by_content_type(candidates: list[RouteMatch], content_type: bytes | None) -> RouteMatch:
    # The CloudEvents batch media type selects a batch route; any other content type a
    # single-event route (binary or structured mode), else a plain JSON route.
    batch = cloudevents.is_batch_content_type(content_type)
    wanted = (
        (BodyKind.CLOUDEVENT_BATCH,)
        if batch
        else (BodyKind.CLOUDEVENT, BodyKind.JSON, BodyKind.NONE)
    )
    for kind in wanted:
        for candidate in candidates:
            if candidate.route.body_kind is kind:
                return candidate
    shown = "none" if content_type is None else content_type.decode("latin-1")
    raise UnsupportedMediaType(f"content-type: {shown} is not accepted here")


# --- requests --------------------------------------------------------------------------


def build_request(
    match: RouteMatch,
    query: str,
    headers: Sequence[tuple[bytes, bytes]],
    body: bytes,
) -> Message:
    """The gRPC request message for a matched HTTP request.

    Precedence, as in grpc-gateway: the body first, then path variables, then query
    parameters (only for fields the body and path leave unbound).

    :raises BadRequest: (or :class:`eventgw.errors.InvalidEvent`) naming the
        field, parameter or attribute at fault.
    """
    route = match.route
    request = route.request_class()
    kind = route.body_kind
    if kind is BodyKind.CLOUDEVENT:
        getattr(request, route.body).CopyFrom(cloudevents.parse_event(list(headers), body))
    elif kind is BodyKind.CLOUDEVENT_BATCH:
        getattr(request, route.body).extend(cloudevents.parse_batch(body))
    elif kind is BodyKind.JSON:
        _merge_json_body(request, route.body, body)
    bound: list[list[str]] = [name.split(".") for name in match.variables]
    for name, value in match.variables.items():
        _set_field(request, name.split("."), [value], f"path variable {name}")
    if query and route.body != "*":
        if route.body:
            bound.append([route.body])
        _apply_query(request, query, bound)
    return request


def _merge_json_body(request: Message, body_field: str, body: bytes) -> None:
    if not body.strip():
        return
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"body: not valid JSON ({e})") from None
    except RecursionError:
        raise BadRequest("body: nested too deeply") from None
    if body_field != "*":
        document = {body_field: document}
    elif not isinstance(document, dict):
        # json_format iterates whatever it is given and fails with TypeError on a number.
        raise BadRequest("body: expected a JSON object")
    try:
        json_format.ParseDict(document, request)
    except json_format.ParseError as e:
        raise BadRequest(f"body: {e}") from None
    except (TypeError, AttributeError, ValueError) as e:
        # Defence in depth: json_format is not supposed to fail with these on any JSON
        # value, but a body that makes it do so is still the client's fault.
        raise BadRequest(f"body: not a JSON {request.DESCRIPTOR.full_name} ({e})") from None


def _field_chain(message: Descriptor, names: list[str], where: str) -> list[FieldDescriptor]:
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for position, name in enumerate(names):
        if current is None:
            raise BadRequest(f"{where}: {'.'.join(names[:position])} is not a message")
        found = current.fields_by_name.get(name) or current.fields_by_camelcase_name.get(name)
        if found is None:
            raise BadRequest(f"{where}: no field {'.'.join(names[: position + 1])}")
        if position < len(names) - 1 and (found.message_type is None or _is_repeated(found)):
            raise BadRequest(f"{where}: {'.'.join(names[: position + 1])} is not a message")
        chain.append(found)
        current = found.message_type
    return chain


def _set_field(request: Message, names: list[str], values: list[str], where: str) -> None:
    chain = _field_chain(cast(Descriptor, request.DESCRIPTOR), names, where)
    leaf = chain[-1]
    if _is_repeated(leaf) and leaf.message_type is not None:
        raise BadRequest(f"{where}: repeated message fields cannot be set from text")
    if leaf.message_type is not None and leaf.message_type.GetOptions().map_entry:
        raise BadRequest(f"{where}: map fields cannot be set from text")
    converted: Any = [_json_scalar(leaf, value, where) for value in values]
    if not _is_repeated(leaf):
        if len(values) > 1:
            raise BadRequest(f"{where}: given more than once")
        converted = converted[0]
    document: Any = converted
    for descriptor in reversed(chain):
        document = {descriptor.name: document}
    try:
        json_format.ParseDict(document, request)
    except json_format.ParseError as e:
        raise BadRequest(f"{where}: {e}") from None


_INTEGER_TYPES: Final = frozenset({
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
})
_FLOAT_TYPES: Final = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE})


def _json_scalar(leaf: FieldDescriptor, value: str, where: str) -> Any:
    # Text from a URL becomes the JSON value the proto3 JSON mapping expects.
    kind = leaf.type
    if kind == FieldDescriptor.TYPE_BOOL:
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise BadRequest(f"{where}: expected true or false, got {value!r}")
    if kind in _INTEGER_TYPES:
        try:
            return int(value)
        except ValueError:
            raise BadRequest(f"{where}: expected an integer, got {value!r}") from None
    if kind in _FLOAT_TYPES:
        try:
            return float(value)
        except ValueError:
            raise BadRequest(f"{where}: expected a number, got {value!r}") from None
    # string, bytes (base64), enum (name or number) and well-known types written as
    # strings (Timestamp, Duration, FieldMask): json_format reads the text as is.
    if kind == FieldDescriptor.TYPE_ENUM and value.lstrip("-").isdigit():
        return int(value)
    return value


def _apply_query(request: Message, query: str, bound: list[list[str]]) -> None:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    except ValueError as e:
        raise BadRequest(f"query: {e}") from None
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    for name, values in grouped.items():
        names = name.split(".")
        if any(names[: len(prefix)] == prefix for prefix in bound):
            continue  # bound by the path or the body: the query may not override it
        if not _names_a_field(cast(Descriptor, request.DESCRIPTOR), names):
            # Ignored, as grpc-gateway does: webhook senders may add their own parameters
            # (the CloudEvents webhook spec's access_token, cache busters...).
            continue
        _set_field(request, names, values, f"query parameter {name}")


def _names_a_field(message: Descriptor, names: list[str]) -> bool:
    current: Descriptor | None = message
    for name in names:
        if current is None:
            return False
        found = current.fields_by_name.get(name) or current.fields_by_camelcase_name.get(name)
        if found is None:
            return False
        current = found.message_type
    return True


# --- responses -------------------------------------------------------------------------


def response_body(route: HttpRoute, response: Message) -> bytes:
    """The proto3 JSON of a response (or of its ``response_body`` field), newline-ended.

    Fields without presence are printed even when empty (``{"ids":[]}``), so clients
    see the full shape of the answer.
    """
    if not route.response_field:
        fields = _string_fields(route.response_class)
        if fields is not None:
            # The broker's answers (ids): the same JSON as json_format's, built directly.
            return _JSON.encode({
                json_name: list(getattr(response, name)) if repeated
                else getattr(response, name)
                for name, json_name, repeated in fields
            }).encode() + b"\n"
    document: Any = json_format.MessageToDict(
        response, always_print_fields_with_no_presence=True
    )
    if route.response_field:
        json_name = route.method.output_type.fields_by_name[route.response_field].json_name
        document = document.get(json_name)
    return _JSON.encode(document).encode() + b"\n"


_JSON: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_StringFields = tuple[tuple[str, str, bool], ...]
_STRING_FIELDS: dict[type[Message], _StringFields | None] = {}


def _string_fields(message_class: type[Message]) -> _StringFields | None:
    """``(name, json_name, repeated)`` of each field when every field is a string
    without presence (singular proto3 or repeated), else ``None``; cached per class."""
    try:
        return _STRING_FIELDS[message_class]
    except KeyError:
        pass
    descriptor = cast(Descriptor, message_class.DESCRIPTOR)
    fields: _StringFields | None = tuple(
        (f.name, f.json_name, _is_repeated(f)) for f in descriptor.fields
    )
    for f in descriptor.fields:
        if f.type != FieldDescriptor.TYPE_STRING or (
            not _is_repeated(f) and f.has_presence
        ):
            fields = None
            break
    _STRING_FIELDS[message_class] = fields
    return fields


def status_details(details_bin: bytes | None) -> list[dict[str, Any]]:
    """The ``details`` of a ``grpc-status-details-bin`` trailer, as proto3 JSON.

    Detail types unknown to the gateway are kept as ``{"@type": url, "value": base64}``;
    an undecodable trailer gives no details.
    """
    if not details_bin:
        return []
    status = status_pb2.Status()
    try:
        status.ParseFromString(details_bin)
    except DecodeError:
        return []
    details: list[dict[str, Any]] = []
    for detail in status.details:
        try:
            details.append(json_format.MessageToDict(detail))
        except (TypeError, KeyError, json_format.Error):
            details.append({
                "@type": detail.type_url,
                "value": base64.b64encode(detail.value).decode("ascii"),
            })
    return details


def status_body(code: int, message: str, details_bin: bytes | None = None) -> bytes:
    """The ``google.rpc.Status`` JSON for a failed call."""
    return error_body(code, message, status_details(details_bin))


def query_of(target: bytes) -> str:
    """The query string of a request target, as text."""
    _, _, query = target.partition(b"?")
    return query.decode("latin-1")


def path_of(target: bytes) -> str:
    """The path of a request target, as text (still percent-encoded)."""
    return target.split(b"?", 1)[0].decode("latin-1")


def mapping_summary(table: RouteTable) -> Mapping[str, str]:
    """``"POST /events" -> "/eventbroker.v1.EventBroker/Publish"`` for logs and docs."""
    return {
        f"{route.http_method} {route.template.text} [{route.body_kind.value}]": route.grpc_path
        for route in table.routes
    }
