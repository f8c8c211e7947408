"""Functional checks that run before a row is loaded with a workload.

A load generator only sees HTTP statuses: h2load counts a gRPC call as a success when
the response is HTTP 200, even if the call failed in its trailers.  So every gRPC route
is first called with a real grpcio client, and every HTTP route with a real request
whose status and body are checked.  A row that fails its check is not measured.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
from typing import Final

import grpc

from rig.rows import Row
from rig.setup import BIG_BODY_SIZE, Certificate
from rig.workloads import (
    EVENT_DATA,
    EVENT_HEADERS,
    GRPC_STREAM_PATH,
    GRPC_UNARY_PATH,
    PUBLISH_PATH,
    STREAM_COUNT,
    STREAM_SIZE,
    Workload,
    is_broker_ceiling,
    port_for,
    publish_request,
    stream_request,
    unary_message,
)

# Bound on every check, so a hung proxy fails its check instead of hanging the rig.
CHECK_TIMEOUT_S: Final = 10.0


class CheckFailed(Exception):
    """The row answered the workload's request wrongly."""


def check(workload: Workload, row: Row, cert: Certificate, bearer: str = "") -> None:
    """Raise :class:`CheckFailed` unless ``row`` serves ``workload`` correctly (``bearer``:
    the token a ``bearer`` workload sends)."""
    port = port_for(workload, row)
    assert port is not None
    try:
        if is_broker_ceiling(workload, row.endpoints):
            _check_publish(port)
        elif workload.endpoint == "events_tls":
            _check_events(port)
        elif workload.path == GRPC_UNARY_PATH:
            _check_unary(port, workload.tls, cert)
        elif workload.path == GRPC_STREAM_PATH:
            _check_stream(port, workload.tls, cert)
        else:
            _check_http(port, workload.tls, workload.path,
                        bearer if workload.bearer else None)
            if workload.name.startswith("h2-"):
                _check_h2(port, workload.path)
    except (OSError, grpc.RpcError, subprocess.SubprocessError) as error:
        raise CheckFailed(f"{type(error).__name__}: {error}") from error


def _channel(port: int, tls: bool, cert: Certificate) -> grpc.Channel:
    target = f"127.0.0.1:{port}"
    if not tls:
        return grpc.insecure_channel(target)
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.ca.read_bytes())
    return grpc.secure_channel(target, credentials,
                               options=[("grpc.ssl_target_name_override", "localhost")])


def _check_unary(port: int, tls: bool, cert: Certificate) -> None:
    with _channel(port, tls, cert) as channel:
        call = channel.unary_unary(GRPC_UNARY_PATH)
        reply = call(unary_message(), timeout=CHECK_TIMEOUT_S)
    if reply != unary_message():
        raise CheckFailed(f"unary echo returned {len(reply)} different bytes")


def _check_stream(port: int, tls: bool, cert: Certificate) -> None:
    with _channel(port, tls, cert) as channel:
        call = channel.unary_stream(GRPC_STREAM_PATH)
        sizes = [len(reply) for reply in call(stream_request(), timeout=CHECK_TIMEOUT_S)]
    # Each reply is EchoMessage{payload}: a tag byte and a 3-byte varint length, then it.
    if len(sizes) != STREAM_COUNT or set(sizes) != {STREAM_SIZE + 4}:
        raise CheckFailed(f"stream returned {len(sizes)} messages of sizes {set(sizes)}")


def _check_publish(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = channel.unary_unary(PUBLISH_PATH)(publish_request(), timeout=CHECK_TIMEOUT_S)
    if reply != b"\x0a\x0abench-0001":
        raise CheckFailed(f"Publish returned {reply!r}")


def _connection(port: int, tls: bool) -> http.client.HTTPConnection:
    if not tls:
        return http.client.HTTPConnection("127.0.0.1", port, timeout=CHECK_TIMEOUT_S)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=CHECK_TIMEOUT_S,
                                       context=context)


def _check_http(port: int, tls: bool, path: str, bearer: str | None = None) -> None:
    connection = _connection(port, tls)
    headers = {} if bearer is None else {"authorization": f"Bearer {bearer}"}
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise CheckFailed(f"GET {path} answered {response.status}: {body[:200]!r}")
    if bearer is not None:
        # The route really checks the token: without it, 401.
        connection = _connection(port, tls)
        try:
            connection.request("GET", path)
            refused = connection.getresponse()
            refused.read()
        finally:
            connection.close()
        if refused.status != 401:
            raise CheckFailed(f"GET {path} without a token answered {refused.status}, not 401")
    if path.endswith("16k") and len(body) != BIG_BODY_SIZE:
        raise CheckFailed(f"GET {path} returned {len(body)} bytes, not {BIG_BODY_SIZE}")


def _check_h2(port: int, path: str) -> None:
    done = subprocess.run(
        ["h2load", "-n", "2", "-c", "1", f"https://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
    )
    if "Application protocol: h2" not in done.stdout or " 2 succeeded" not in done.stdout:
        raise CheckFailed("no HTTP/2 over TLS (ALPN h2):\n" + done.stdout[-600:])


def _check_events(port: int) -> None:
    connection = _connection(port, tls=True)
    try:
        connection.request("POST", "/events", body=EVENT_DATA, headers=dict(EVENT_HEADERS))
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 202:
        raise CheckFailed(f"POST /events answered {response.status}: {body[:200]!r}")
    try:
        accepted = json.loads(body)
    except ValueError as error:
        raise CheckFailed(f"POST /events answered non-JSON {body[:200]!r}") from error
    if accepted.get("id") != "bench-0001":
        raise CheckFailed(f"POST /events answered {accepted!r}, not the event's id")
