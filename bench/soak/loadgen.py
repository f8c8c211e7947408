"""The soak's load: every flow at a fixed rate until a given time, one record per request.

``python loadgen.py --tls-port P --clear-port C --ca PEM --until EPOCH --out DIR``

One thread per lane; a lane sends its requests one at a time on its own connection at
a fixed rate (a slot missed because the previous request was slow is skipped and
counted, never made up in a burst). Every request becomes one JSON line in
``DIR/records.jsonl``: start time (epoch seconds), lane, flow, elapsed seconds, ok,
the deadline it was held to, and what went wrong. The id of every event answered 202
goes to ``DIR/accepted.txt``. A failed client connection is thrown away and a new one
made for the next request.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from demo.masterapi._proto import demo_pb2, demo_pb2_grpc

# The deadlines each flow is held to, with the gateway configured as soak.py does:
# /api: master_api.connect_timeout (2) + response_timeout (5); /events: the broker
# deadline (3) plus the connect timeout (2); gRPC: the client's own deadline.
API_DEADLINE: Final = 7.0
EVENTS_DEADLINE: Final = 5.0
GRPC_UNARY_DEADLINE: Final = 2.0
GRPC_STREAM_DEADLINE: Final = 3.0
# A client gives up this long after the deadline (and the check then fails).
CLIENT_SLACK: Final = 5.0

Outcome = tuple[bool, str, list[str]]  # ok, what went wrong, event ids answered 202


@dataclass
class Lane:
    name: str
    flow: str
    rate: float
    deadline: float
    make: Callable[[], Any]
    call: Callable[[Any, int], Outcome]
    close: Callable[[Any], None]


class Writer:
    """Appends records and accepted ids, thread-safe, flushed every second."""

    def __init__(self, out: Path) -> None:
        self._records = (out / "records.jsonl").open("a")
        self._accepted = (out / "accepted.txt").open("a")
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    def write(self, record: dict[str, Any], ids: list[str]) -> None:
        with self._lock:
            self._records.write(json.dumps(record) + "\n")
            for event_id in ids:
                self._accepted.write(event_id + "\n")
            if time.monotonic() - self._flushed > 1.0:
                self.flush()

    def flush(self) -> None:
        self._records.flush()
        self._accepted.flush()
        self._flushed = time.monotonic()


def _ssl_context(ca: str, alpn: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.set_alpn_protocols([alpn])
    return context


def _events_body(mode: str, n: int) -> tuple[dict[str, str], bytes, list[str]]:
    ids = [f"soak-{uuid.uuid4().hex}" for _ in range(3 if mode == "batch" else 1)]
    if mode == "binary":
        headers = {"ce-specversion": "1.0", "ce-id": ids[0], "ce-source": "/soak",
                   "ce-type": "soak.binary", "content-type": "application/json"}
        return headers, json.dumps({"n": n}).encode(), ids
    events = [{"specversion": "1.0", "id": i, "source": "/soak", "type": f"soak.{mode}",
               "datacontenttype": "application/json", "data": {"n": n}} for i in ids]
    if mode == "structured":
        return ({"content-type": "application/cloudevents+json"},
                json.dumps(events[0]).encode(), ids)
    return ({"content-type": "application/cloudevents-batch+json"},
            json.dumps(events).encode(), ids)


def _api_request(n: int) -> tuple[str, str, bytes | None, dict[str, str]]:
    if n % 3 == 2:
        return ("POST", "/api/echo", json.dumps({"n": n, "pad": "x" * 200}).encode(),
                {"content-type": "application/json"})
    return ("GET", "/api/hello" if n % 3 == 0 else "/api/items/1", None, {})


def h1_lanes(host: str, tls_port: int, clear_port: int, ca: str) -> list[Lane]:
    def make_tls() -> http.client.HTTPConnection:
        return http.client.HTTPSConnection(host, tls_port, timeout=API_DEADLINE + CLIENT_SLACK,
                                           context=_ssl_context(ca, "http/1.1"))

    def make_clear() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", clear_port,
                                          timeout=EVENTS_DEADLINE + CLIENT_SLACK)

    def api(conn: http.client.HTTPConnection, n: int) -> Outcome:
        method, path, body, headers = _api_request(n)
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status == 200, f"HTTP {response.status}", []

    def events(mode: str) -> Callable[[http.client.HTTPConnection, int], Outcome]:
        def call(conn: http.client.HTTPConnection, n: int) -> Outcome:
            headers, body, ids = _events_body(mode, n)
            conn.request("POST", "/events", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status == 202:
                return True, "", ids
            return False, f"HTTP {response.status}", []
        return call

    def close(conn: http.client.HTTPConnection) -> None:
        conn.close()

    return [
        Lane("api-h1-tls", "api", 8, API_DEADLINE, make_tls, api, close),
        Lane("api-h1-clear", "api", 4, API_DEADLINE, make_clear, api, close),
        Lane("events-binary-h1-tls", "events", 4, EVENTS_DEADLINE, make_tls,
             events("binary"), close),
        Lane("events-batch-h1-clear", "events", 2, EVENTS_DEADLINE, make_clear,
             events("batch"), close),
    ]


def h2_lanes(host: str, tls_port: int, ca: str) -> list[Lane]:
    base = f"https://{host}:{tls_port}"

    def make() -> httpx.Client:
        return httpx.Client(http1=False, http2=True, verify=_ssl_context(ca, "h2"),
                            timeout=API_DEADLINE + CLIENT_SLACK, base_url=base)

    def api(client: httpx.Client, n: int) -> Outcome:
        method, path, body, headers = _api_request(n)
        response = client.request(method, path, content=body, headers=headers)
        if response.http_version != "HTTP/2":
            return False, f"not HTTP/2: {response.http_version}", []
        return response.status_code == 200, f"HTTP {response.status_code}", []

    def events(client: httpx.Client, n: int) -> Outcome:
        headers, body, ids = _events_body("structured", n)
        response = client.post("/events", content=body, headers=headers)
        if response.status_code == 202:
            return True, "", ids
        return False, f"HTTP {response.status_code}", []

    def close(client: httpx.Client) -> None:
        client.close()

    return [
        Lane("api-h2-tls", "api", 12, API_DEADLINE, make, api, close),
        Lane("events-structured-h2-tls", "events", 4, EVENTS_DEADLINE, make, events, close),
    ]


def grpc_lanes(host: str, tls_port: int, clear_port: int, ca: str) -> list[Lane]:
    root = Path(ca).read_bytes()

    def make_tls() -> tuple[grpc.Channel, Any]:
        channel = grpc.secure_channel(f"{host}:{tls_port}",
                                      grpc.ssl_channel_credentials(root_certificates=root))
        return channel, demo_pb2_grpc.ItemsStub(channel)  # type: ignore[no-untyped-call]

    def make_clear() -> tuple[grpc.Channel, Any]:
        channel = grpc.insecure_channel(f"127.0.0.1:{clear_port}")
        return channel, demo_pb2_grpc.ItemsStub(channel)  # type: ignore[no-untyped-call]

    def unary(pair: tuple[grpc.Channel, Any], n: int) -> Outcome:
        item = pair[1].GetItem(demo_pb2.GetItemRequest(id=str(n), payload_size=64),
                               timeout=GRPC_UNARY_DEADLINE)
        return item.id == str(n), "" if item.id == str(n) else "wrong item", []

    def stream(pair: tuple[grpc.Channel, Any], n: int) -> Outcome:
        items = list(pair[1].WatchItems(demo_pb2.WatchItemsRequest(count=20, payload_size=512),
                                        timeout=GRPC_STREAM_DEADLINE))
        return len(items) == 20, f"{len(items)} of 20 messages", []

    def close(pair: tuple[grpc.Channel, Any]) -> None:
        pair[0].close()

    return [
        Lane("grpc-unary-tls", "grpc", 10, GRPC_UNARY_DEADLINE, make_tls, unary, close),
        Lane("grpc-unary-h2c", "grpc", 5, GRPC_UNARY_DEADLINE, make_clear, unary, close),
        Lane("grpc-stream-tls", "grpc", 2, GRPC_STREAM_DEADLINE, make_tls, stream, close),
    ]


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError):
        code = error.code()
        return f"grpc {code.name if code else '?'}"
    return type(error).__name__


def run_lane(lane: Lane, until: float, writer: Writer, missed: dict[str, int]) -> None:
    interval = 1.0 / lane.rate
    client: Any = None
    n = 0
    next_at = time.time()
    while True:
        now = time.time()
        if now >= until:
            break
        if next_at > now:
            time.sleep(next_at - now)
        elif now - next_at > interval:  # behind: skip the missed slots
            skipped = int((now - next_at) / interval)
            missed[lane.name] = missed.get(lane.name, 0) + skipped
            next_at += skipped * interval
        next_at += interval
        n += 1
        start = time.time()
        ok, detail = False, ""
        ids: list[str] = []
        try:
            if client is None:
                client = lane.make()
            ok, detail, ids = lane.call(client, n)
        except Exception as error:
            detail = _describe(error)
            if not isinstance(error, grpc.RpcError) and client is not None:
                try:
                    lane.close(client)
                except Exception:
                    pass
                client = None
        elapsed = time.time() - start
        writer.write({"t": start, "lane": lane.name, "flow": lane.flow, "elapsed": elapsed,
                      "ok": ok, "deadline": lane.deadline, "detail": "" if ok else detail},
                     ids)
    if client is not None:
        lane.close(client)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="localhost", help="TLS name (the dev certificate's)")
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--clear-port", type=int, required=True)
    parser.add_argument("--ca", required=True, help="the gateway's certificate (PEM)")
    parser.add_argument("--until", type=float, required=True, help="stop at this epoch time")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every rate")
    options = parser.parse_args(argv)
    options.out.mkdir(parents=True, exist_ok=True)
    lanes = (h1_lanes(options.host, options.tls_port, options.clear_port, options.ca)
             + h2_lanes(options.host, options.tls_port, options.ca)
             + grpc_lanes(options.host, options.tls_port, options.clear_port, options.ca))
    for lane in lanes:
        lane.rate *= options.scale
    writer = Writer(options.out)
    missed: dict[str, int] = {}
    threads = [threading.Thread(target=run_lane, args=(lane, options.until, writer, missed),
                                name=lane.name, daemon=True) for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, options.until - time.time()) + 60)
    writer.flush()
    (options.out / "lanes.json").write_text(json.dumps(
        {"lanes": {lane.name: {"flow": lane.flow, "rate": lane.rate, "deadline": lane.deadline}
                   for lane in lanes}, "missed_slots": missed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
