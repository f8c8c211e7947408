"""Two Event Brokers, each client's balancing over them: throughput and share.

Starts two demo brokers as child processes on 127.0.0.1 (free ports), then for each
``event_broker.client`` (grpcio: its own ``round_robin`` over an ``ipv4:`` target;
h2: the gateway's least-request balancing over a pool per broker) publishes N binary
events through the real ``EventsEndpoint`` with C in flight, and prints events/s, the
share each broker got and the p50/p99 latency.  Everything stops by itself.

    PYTHONPATH=. python bench/balancing/brokers.py [N] [C]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from twisted.internet import defer, reactor, task

from eventgw.config import Limits, load_config
from eventgw.events.target import EventsEndpoint
from tests.events_support import binary_headers, exchange


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"broker on {port} did not start")


@defer.inlineCallbacks
def run(client: str, ports: list[int], total: int, concurrency: int,
        records: list[str], tag: str) -> Any:
    hosts = ", ".join(f"'127.0.0.1:{p}'" for p in ports)
    config = load_config(
        f"master_api: {{http: 'http://127.0.0.1:9'}}\n"
        f"event_broker: {{grpc: [{hosts}], client: {client}, deadline: 10}}\n"
    )
    endpoint = EventsEndpoint(config.event_broker, Limits(), reactor=reactor, client=client)
    # Warm up: connections to both brokers.
    for i in range(50):
        yield exchange(endpoint, binary_headers(f"warm-{i}"), b"{}")
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sem = defer.DeferredSemaphore(concurrency)

    def one(i: int) -> Any:
        started = time.perf_counter()

        def done(writer: Any) -> None:
            latencies.append(time.perf_counter() - started)
            statuses[writer.status] = statuses.get(writer.status, 0) + 1

        return exchange(endpoint, binary_headers(f"{tag}-{i}"), b"{}").addCallback(done)

    started = time.perf_counter()
    yield defer.gatherResults([sem.run(one, i) for i in range(total)])
    elapsed = time.perf_counter() - started
    yield task.deferLater(reactor, 0.5, lambda: None)  # the brokers' record files
    share = []
    for record in records:
        with open(record, encoding="utf-8") as f:
            share.append(sum(1 for line in f if line.startswith(tag + "-")))
    latencies.sort()
    print(
        f"{client:7s} {total / elapsed:8.0f} events/s  statuses {statuses}  "
        f"p50 {latencies[len(latencies) // 2] * 1000:.2f} ms  "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.2f} ms  share {share}"
    )
    yield endpoint.close()


@defer.inlineCallbacks
def main(total: int, concurrency: int) -> Any:
    ports = [free_port(), free_port()]
    folder = tempfile.mkdtemp(prefix="eventgw-bench-")
    records = [os.path.join(folder, f"broker-{p}.ids") for p in ports]
    children = [
        subprocess.Popen([sys.executable, "-m", "demo.eventbroker", "--port", str(p),
                          "--quiet", "--record", record],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p, record in zip(ports, records, strict=True)
    ]
    try:
        for port in ports:
            wait_listening(port)
        for index, client in enumerate(("grpcio", "h2", "grpcio", "h2")):
            yield run(client, ports, total, concurrency, records, f"{client}{index}")
    finally:
        for child in children:
            child.terminate()
            child.wait(10)
        yield task.deferLater(reactor, 0, lambda: None)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    c = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    d = main(n, c)
    d.addErrback(lambda f: sys.stderr.write(f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
