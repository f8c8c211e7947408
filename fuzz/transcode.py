"""Fuzz target: the HTTP/JSON <-> gRPC transcoder.

Run from the repository root::

    PYTHONPATH=$PWD .venv/bin/python fuzz/transcode.py -runs=1000000 \
        -dict=fuzz/transcode.dict fuzz/corpus/transcode

Routes: the Event Broker's (``eventbroker.v1.EventBroker``) and the test-only
``topics.v1.Topics`` service (templates with variables, ``**``, a ``:verb``, body
fields, ``response_body``).  Input layout: fields separated by ``\\xff`` (so the
binary fields cannot hold that byte, except the last): method, path, query string,
content type (an absent field is no header), body, a serialized response message of
the matched method, and the rest as a ``grpc-status-details-bin`` trailer; the query
string doubles as the status message and the method's length as the status code.

Properties checked on every input:

* matching raises only RouteNotFound, MethodNotAllowed or UnsupportedMediaType, and
  building the request only the gateway's own errors (BadRequest, InvalidEvent...);
* a built request serializes;
* any response message that parses renders as JSON, and any trailer bytes and message
  render as a ``google.rpc.Status`` JSON object.
"""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports(include=["eventgw"]):
    from google.protobuf.message import DecodeError

    from eventgw._proto.eventbroker.v1 import eventbroker_pb2
    from eventgw.errors import (
        GatewayError,
        MethodNotAllowed,
        RouteNotFound,
        UnsupportedMediaType,
    )
    from eventgw.events.transcode import (
        RouteTable,
        build_request,
        path_of,
        query_of,
        response_body,
        status_body,
    )
    from tests._proto.topics.v1 import topics_pb2

TABLE = RouteTable.from_services([
    eventbroker_pb2.DESCRIPTOR.services_by_name["EventBroker"],
    topics_pb2.DESCRIPTOR.services_by_name["Topics"],
])
MATCH_ERRORS = (RouteNotFound, MethodNotAllowed, UnsupportedMediaType)


def check(data: bytes) -> None:
    """The properties above for one input."""
    fields = data.split(b"\xff", 6)
    fields += [b""] * (7 - len(fields))
    method, path, query, content_type, body, response, details = fields
    text_query = query.decode("latin-1")
    rendered = json.loads(status_body(len(method) % 17, text_query, details))
    assert isinstance(rendered, dict), rendered

    headers = [(b"content-type", content_type)] if len(fields) > 3 and content_type else []
    try:
        match = TABLE.match(
            method.decode("latin-1"), path_of(path), content_type if headers else None
        )
    except MATCH_ERRORS:
        return
    try:
        build_request(match, query_of(b"?" + query), headers, body).SerializeToString()
    except GatewayError:
        pass
    reply = match.route.response_class()
    try:
        reply.ParseFromString(response)
    except DecodeError:
        return
    json.loads(response_body(match.route, reply))


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
