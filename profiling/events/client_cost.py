"""CPU per Publish call of each broker client variant, in one process, no HTTP side.

Starts the C++ broker from bench/build, then for each variant keeps CONCURRENCY calls
in flight on the reactor for SECONDS and reports the process's CPU time (all threads,
grpcio's included) per call.

    .venv/bin/python profiling/events/client_cost.py [SECONDS] [variant ...]
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
from twisted.internet import defer, reactor

from eventgw._proto.eventbroker.v1 import eventbroker_pb2
from eventgw.config import BrokerUpstream
from eventgw.events.broker import GrpcioBrokerClient
from eventgw.events.client import call_metadata
from eventgw.events.h2broker import H2BrokerClient
from eventgw.events.target import EVENT_BROKER_SERVICE
from eventgw.events.transcode import RouteTable

CONCURRENCY = 16
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROUTE = next(r for r in RouteTable.from_services([EVENT_BROKER_SERVICE]).routes
             if r.grpc_path.endswith("/Publish"))


def request() -> eventbroker_pb2.PublishRequest:
    message = eventbroker_pb2.PublishRequest()
    event = message.event
    event.id, event.source, event.spec_version, event.type = "bench-0001", "/b", "1.0", "t"
    event.text_data = '{"sensor": "bench-0001", "reading": 21.5}'
    return message


Starter = Callable[[], defer.Deferred[Any]]


def grpcio_variant(target: str, options: list[tuple[str, Any]] | None = None,
                   mode: str = "txaio") -> tuple[Starter, Callable[[], None]]:
    """grpcio futures; mode: txaio (as shipped), plain (Deferred + callFromThread)."""
    if mode == "txaio":
        client = GrpcioBrokerClient(BrokerUpstream(target=target, tls=False), reactor=reactor)
        if options is not None:
            client._channel.close()
            client._channel = grpc.insecure_channel(target, options)
            client._callables.clear()

        def start() -> defer.Deferred[Any]:
            metadata, _ = call_metadata([])
            return client.call(ROUTE, request(), metadata)

        return start, lambda: None
    channel = grpc.insecure_channel(target, options or [])
    multicallable = channel.unary_unary(
        ROUTE.grpc_path, request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=ROUTE.response_class.FromString)
    call_from_thread = reactor.callFromThread  # type: ignore[attr-defined]

    def start_plain() -> defer.Deferred[Any]:
        metadata, _ = call_metadata([])
        future = multicallable.future(
            request(), timeout=5.0,
            metadata=tuple([(k.decode(), v.decode()) for k, v in metadata]))
        d: defer.Deferred[Any] = defer.Deferred(lambda _: future.cancel())

        def deliver(done: grpc.Future) -> None:
            if done.exception() is None:
                d.callback(done.result())
            else:
                d.errback(done.exception())

        future.add_done_callback(lambda f: call_from_thread(deliver, f))
        return d

    return start_plain, channel.close


def h2_variant(target: str) -> tuple[Starter, Callable[[], None]]:
    client = H2BrokerClient(BrokerUpstream(target=target, tls=False), reactor=reactor)

    def start() -> defer.Deferred[Any]:
        metadata, _ = call_metadata([])
        return client.call(ROUTE, request(), metadata)

    return start, lambda: None


@defer.inlineCallbacks
def measure(name: str, start: Starter, seconds: float) -> Any:
    done = {"n": 0, "errors": 0}
    stop_at = [0.0]
    finished: defer.Deferred[None] = defer.Deferred()
    running = [0]

    def launch() -> None:
        running[0] += 1
        start().addCallbacks(ok, bad)

    def ok(_: object) -> None:
        done["n"] += 1
        again()

    def bad(f: Any) -> None:
        done["errors"] += 1
        again()

    def again() -> None:
        running[0] -= 1
        if time.monotonic() < stop_at[0]:
            launch()
        elif running[0] == 0 and not finished.called:
            finished.callback(None)

    # warm-up
    stop_at[0] = time.monotonic() + 1.0
    for _ in range(CONCURRENCY):
        launch()
    yield finished
    finished = defer.Deferred()
    done.update(n=0, errors=0)
    c0, t0 = cpu(), time.monotonic()
    stop_at[0] = t0 + seconds
    for _ in range(CONCURRENCY):
        launch()
    yield finished
    c1, t1 = cpu(), time.monotonic()
    n = max(done["n"], 1)
    print(f"{name:34s} {done['n'] / (t1 - t0):8.0f} calls/s  {(c1 - c0) / n * 1e6:6.1f} us CPU/call"
          f"  errors={done['errors']}", flush=True)


@defer.inlineCallbacks
def main() -> Any:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    wanted = sys.argv[2:]
    port = free_port()
    broker = subprocess.Popen([os.path.join(ROOT, "bench/build/grpc_backend"), "--port",
                               str(port)], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    target = f"127.0.0.1:{port}"
    lean = [("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0),
            ("grpc.max_receive_message_length", 4 << 20)]
    variants: dict[str, Callable[[], tuple[Starter, Callable[[], None]]]] = {
        "grpcio-txaio (shipped)": lambda: grpcio_variant(target),
        "grpcio-txaio no retries/proxy": lambda: grpcio_variant(target, lean),
        "grpcio-plain-deferred": lambda: grpcio_variant(target, [], mode="plain"),
        "grpcio-plain no retries/proxy": lambda: grpcio_variant(target, lean, mode="plain"),
        "h2": lambda: h2_variant(target),
    }
    try:
        for name, make in variants.items():
            if wanted and not any(w in name for w in wanted):
                continue
            start, close = make()
            yield measure(name, start, seconds)
            close()
    finally:
        broker.terminate()
        broker.wait()
        reactor.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    reactor.callWhenRunning(main)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
