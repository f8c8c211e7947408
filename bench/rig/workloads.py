"""The workloads, the load-generator command lines that run them, and their output parsers.

Throughput workloads saturate the proxy with a fixed number of connections for a fixed
time: ``wrk`` for HTTP/1.1, ``h2load`` for HTTP/2 and gRPC.  The fixed-rate latency
workloads use ``h2load --rps`` (wrk2 is not packaged in Debian): 5 connections each
sending 100 requests per second, one at a time (HTTP/1.1 cannot pipeline, and gRPC is
run the same way), for 500 requests per second in all; h2load's per-request log gives
p50/p99.  h2load measures each request from when it is sent, so a proxy that falls
behind the rate shows up in the achieved rate rather than in the percentiles.
"""

from __future__ import annotations

import re
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from rig.rows import Endpoints, Row

# A run that does not end within its duration plus this is killed and counted as failed.
RUN_SLACK_S: Final = 20.0
# h2load waits for a response forever by default; a connection silent this long is
# dropped and its requests count as timeouts (errors), so one stuck response shows in
# the table instead of stopping the run.
H2LOAD_INACTIVITY_S: Final = 10
GRPC_UNARY_PATH: Final = "/bench.echo.Echo/Unary"
GRPC_STREAM_PATH: Final = "/bench.echo.Echo/Stream"
PUBLISH_PATH: Final = "/eventbroker.v1.EventBroker/Publish"
STREAM_COUNT: Final = 256
STREAM_SIZE: Final = 16 * 1024
UNARY_MESSAGE_SIZE: Final = 100
FIXED_RATE: Final = 500
FIXED_RATE_CONNECTIONS: Final = 5
# Fixed-rate runs last at least this long, so that p99 rests on 1,500 samples or more.
FIXED_RATE_MIN_S: Final = 3


@dataclass(frozen=True)
class Workload:
    name: str
    endpoint: str  # the Endpoints field this workload needs
    path: str
    tool: str  # "wrk" or "h2load"
    connections: int
    streams: int = 1  # h2load -m: concurrent streams per connection
    h1: bool = False  # h2load --h1
    body: str | None = None  # key into Bodies
    unit: str = "req"  # "req", "MB" (throughput in MB/s, CPU in s/GB) or "ev"
    fixed_rate: int | None = None
    bearer: bool = False  # sends the bench's JWT (Bodies.bearer) as a bearer token

    @property
    def tls(self) -> bool:
        return self.endpoint.endswith("_tls")


WORKLOADS: Final = (
    Workload("h1-small-tls", "http_tls", "/api/small", "wrk", 16),
    Workload("h1-small-clear", "http_clear", "/api/small", "wrk", 16),
    Workload("h1-16k-tls", "http_tls", "/api/16k", "wrk", 16),
    Workload("h1-16k-clear", "http_clear", "/api/16k", "wrk", 16),
    # The access checks (eventgw only), beside h1-small-tls: a JWT route, a rate limit.
    Workload("h1-jwt-tls", "access_tls", "/api/jwt/small", "wrk", 16, bearer=True),
    Workload("h1-ratelimit-tls", "access_tls", "/api/rl/small", "wrk", 16),
    Workload("h2-small-tls", "http_tls", "/api/small", "h2load", 4, streams=16),
    Workload("grpc-unary-tls", "grpc_tls", GRPC_UNARY_PATH, "h2load", 4, streams=16,
             body="unary"),
    Workload("grpc-unary-h2c", "grpc_h2c", GRPC_UNARY_PATH, "h2load", 4, streams=16,
             body="unary"),
    Workload("grpc-stream-tls", "grpc_tls", GRPC_STREAM_PATH, "h2load", 2, streams=2,
             body="stream", unit="MB"),
    Workload("lat-h1-tls", "http_tls", "/api/small", "h2load", FIXED_RATE_CONNECTIONS,
             h1=True, fixed_rate=FIXED_RATE),
    Workload("lat-grpc-tls", "grpc_tls", GRPC_UNARY_PATH, "h2load", FIXED_RATE_CONNECTIONS,
             body="unary", fixed_rate=FIXED_RATE),
    Workload("events-tls", "events_tls", "/events", "h2load", 16, h1=True, body="event",
             unit="ev"),
)
WORKLOAD_NAMES: Final = tuple(workload.name for workload in WORKLOADS)

# Headers of a binary-mode CloudEvent (the body is its data).
EVENT_HEADERS: Final = (
    ("ce-specversion", "1.0"),
    ("ce-id", "bench-0001"),
    ("ce-source", "/bench/load"),
    ("ce-type", "com.example.bench.measured"),
    ("content-type", "application/json"),
)
EVENT_DATA: Final = b'{"sensor": "bench-0001", "reading": 21.5, "unit": "celsius", "ok": true}'
GRPC_HEADERS: Final = (("content-type", "application/grpc"), ("te", "trailers"))


# --- request bodies: protobuf wire format written by hand, no generated code --------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _field_int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def grpc_frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def unary_message() -> bytes:
    """An ``EchoMessage`` of exactly UNARY_MESSAGE_SIZE bytes on the wire."""
    message = _field_bytes(1, b"p" * (UNARY_MESSAGE_SIZE - 2))
    assert len(message) == UNARY_MESSAGE_SIZE
    return message


def stream_request() -> bytes:
    """``StreamRequest{count: STREAM_COUNT, size: STREAM_SIZE}``."""
    return _field_int(1, STREAM_COUNT) + _field_int(2, STREAM_SIZE)


def publish_request(event_id: bytes = b"bench-0001") -> bytes:
    """``PublishRequest{event: CloudEvent{id, source, spec_version, type, text_data}}``."""
    event = (
        _field_bytes(1, event_id)
        + _field_bytes(2, b"/bench/load")
        + _field_bytes(3, b"1.0")
        + _field_bytes(4, b"com.example.bench.measured")
        + _field_bytes(7, EVENT_DATA)
    )
    return _field_bytes(1, event)


@dataclass(frozen=True)
class Bodies:
    """The request body files h2load sends (``-d``), and the bearer token of the JWT
    workload (minted per run, :func:`rig.setup.make_jwt`)."""

    unary: Path
    stream: Path
    event: Path
    publish: Path
    bearer: str = ""

    @classmethod
    def write(cls, directory: Path, bearer: str = "") -> Bodies:
        directory.mkdir(parents=True, exist_ok=True)
        contents = {
            "unary": grpc_frame(unary_message()),
            "stream": grpc_frame(stream_request()),
            "event": EVENT_DATA,
            "publish": grpc_frame(publish_request()),
        }
        paths = {name: directory / f"{name}.bin" for name in contents}
        for name, data in contents.items():
            paths[name].write_bytes(data)
        return cls(**paths, bearer=bearer)


# --- the commands ---------------------------------------------------------------------


def run_seconds(workload: Workload, duration: int) -> int:
    """How long one run of ``workload`` lasts when runs are asked to last ``duration``."""
    if workload.fixed_rate is not None:
        return max(duration, FIXED_RATE_MIN_S)
    return duration


@dataclass(frozen=True)
class Command:
    tool: str  # "wrk" or "h2load": which parser reads the output
    argv: list[str]
    log_file: Path | None  # h2load's per-request log


def port_for(workload: Workload, row: Row) -> int | None:
    """The row's port for this workload, or ``None`` if the row does not offer it."""
    port: int | None = getattr(row.endpoints, workload.endpoint)
    if port is None and workload.endpoint == "events_tls":
        return row.endpoints.broker_h2c
    return port


def is_broker_ceiling(workload: Workload, endpoints: Endpoints) -> bool:
    """The direct row's events run: gRPC ``Publish`` straight to the broker, over h2c."""
    return workload.endpoint == "events_tls" and endpoints.events_tls is None


def build_command(
    workload: Workload, row: Row, duration: int, bodies: Bodies, log_file: Path
) -> Command:
    """The load generator's command line for one run of ``duration`` whole seconds."""
    duration = run_seconds(workload, duration)
    port = port_for(workload, row)
    assert port is not None, f"{row.name} does not offer {workload.name}"
    scheme = "https" if workload.tls else "http"
    path, h1, body = workload.path, workload.h1, workload.body
    headers: tuple[tuple[str, str], ...] = ()
    if is_broker_ceiling(workload, row.endpoints):
        scheme, path, h1, body = "http", PUBLISH_PATH, False, "publish"
    url = f"{scheme}://127.0.0.1:{port}{path}"
    if workload.tool == "wrk":
        argv = ["wrk", "-t1", f"-c{workload.connections}", f"-d{duration}s", "--latency"]
        if workload.bearer:
            argv += ["-H", f"authorization: Bearer {bodies.bearer}"]
        return Command("wrk", [*argv, url], None)
    if body is not None:
        headers = GRPC_HEADERS if body in ("unary", "stream", "publish") else EVENT_HEADERS
    argv = ["h2load", "-t1", "-c", str(workload.connections), "-m", str(workload.streams),
            "--log-file", str(log_file), "-N", str(H2LOAD_INACTIVITY_S)]
    if workload.fixed_rate is None:
        argv += ["-D", str(duration)]
    else:
        # A request count, not -D: h2load 1.52 with --rps and -D may never stop.
        argv += ["--rps", str(workload.fixed_rate // workload.connections),
                 "-n", str(round(workload.fixed_rate * duration))]
    if h1:
        argv.append("--h1")
    if body is not None:
        argv += ["-d", str(getattr(bodies, body))]
    for name, value in headers:
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    return Command("h2load", argv, log_file)


# --- running and parsing ------------------------------------------------------------


@dataclass(frozen=True)
class LoadResult:
    """What the load generator saw in one run."""

    requests: int  # completed successfully
    errors: int  # failed, errored, timed out, non-2xx
    seconds: float
    data_bytes: int  # response body bytes (h2load: DATA payload); 0 if unknown
    p50_ms: float | None
    p99_ms: float | None
    protocol: str | None = None  # h2load's "Application protocol"


class LoadError(Exception):
    """The load generator failed or printed something the parser does not understand."""


def run_load(command: Command, duration: int) -> LoadResult:
    try:
        done = subprocess.run(command.argv, capture_output=True, text=True,
                              timeout=duration + RUN_SLACK_S)
    except subprocess.TimeoutExpired as error:
        seen = error.stdout.decode(errors="replace") if isinstance(error.stdout, bytes) else (
            error.stdout or ""
        )
        tail = "\n".join(seen.strip().splitlines()[-4:])
        message = f"{command.tool} did not finish in time; its last lines:\n{tail}"
        raise LoadError(message) from error
    if done.returncode != 0:
        raise LoadError(f"{command.tool} exited {done.returncode}: {done.stderr.strip()}")
    if command.tool == "wrk":
        return parse_wrk(done.stdout)
    assert command.log_file is not None
    try:
        log = command.log_file.read_text()
    except OSError as error:
        raise LoadError(f"h2load wrote no per-request log: {error}") from error
    return parse_h2load(done.stdout, log)


_DURATION_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str, unit: str) -> float:
    return float(value) * _DURATION_UNITS[unit]


def parse_wrk(output: str) -> LoadResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", output)
    if done is None:
        raise LoadError("unexpected wrk output:\n" + output)
    percentile = {
        match[1]: _ms(match[2], match[3])
        for match in re.finditer(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", output,
                                 re.MULTILINE)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = (int(non_2xx[1]) if non_2xx else 0) + (
        sum(int(count) for count in sockets.groups()) if sockets else 0
    )
    requests = int(done[1])
    return LoadResult(
        requests=requests - (int(non_2xx[1]) if non_2xx else 0),
        errors=errors,
        seconds=_ms(done[2], done[3]) / 1e3,
        data_bytes=0,
        p50_ms=percentile.get("50"),
        p99_ms=percentile.get("99"),
    )


def parse_h2load(output: str, log: str) -> LoadResult:
    finished = re.search(r"finished in ([\d.]+)(us|ms|s|m),", output)
    counts = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout", output,
    )
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    data = re.search(r"\((\d+)\) data", output)
    protocol = re.search(r"Application protocol: (\S+)", output)
    if finished is None or counts is None or statuses is None or data is None:
        raise LoadError("unexpected h2load output:\n" + output)
    # h2load calls a request "succeeded" on any 2xx/3xx; gRPC status is checked separately.
    succeeded = int(statuses[1])
    errors = sum(int(count) for count in counts.groups()[1:]) + sum(
        int(count) for count in statuses.groups()[1:]
    )
    elapsed_us = sorted(
        int(fields[2]) for fields in (line.split("\t") for line in log.splitlines())
        if len(fields) == 3 and fields[1].startswith("2")
    )
    p50 = p99 = None
    if len(elapsed_us) >= 2:
        cuts = statistics.quantiles(elapsed_us, n=100, method="inclusive")
        p50, p99 = cuts[49] / 1e3, cuts[98] / 1e3
    return LoadResult(
        requests=succeeded,
        errors=errors,
        seconds=_ms(finished[1], finished[2]) / 1e3,
        data_bytes=int(data[1]),
        p50_ms=p50,
        p99_ms=p99,
        protocol=protocol[1] if protocol else None,
    )
