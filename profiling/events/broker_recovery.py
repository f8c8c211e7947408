"""How soon the grpcio broker client succeeds again after the Event Broker was down.

``PYTHONPATH=. .venv/bin/python profiling/events/broker_recovery.py [--down 20]``:
starts the demo Event Broker on 127.0.0.1, makes a call, kills the broker, keeps calling
for ``--down`` seconds (the channel backs off meanwhile), restarts it, and prints how
long after the broker listened again the first call succeeded.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from twisted.internet import reactor

from eventgw._proto.eventbroker.v1 import eventbroker_pb2
from eventgw.config import load_config
from eventgw.events.client import new_broker_client
from eventgw.events.transcode import RouteTable

REPO = Path(__file__).resolve().parents[2]
PORT = 50999


def start_broker() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "demo.eventbroker", "--port", str(PORT)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--down", type=float, default=20.0)
    args = parser.parse_args()
    config = load_config(
        f"master_api: {{http: 'http://127.0.0.1:1'}}\n"
        f"event_broker: {{grpc: '127.0.0.1:{PORT}'}}\n"
    )
    assert config.event_broker is not None
    client = new_broker_client(config.event_broker, "grpcio", reactor=reactor)
    service = eventbroker_pb2.DESCRIPTOR.services_by_name["EventBroker"]
    route = next(r for r in RouteTable.from_services([service]).routes
                 if r.method.name == "Publish")
    request = eventbroker_pb2.PublishRequest()
    request.event.id, request.event.source = "x", "/recovery"
    request.event.spec_version, request.event.type = "1.0", "t"

    def call_once() -> bool:
        done = threading.Event()
        result: list[bool] = []

        def start() -> None:
            d = client.call(route, request, [])
            d.addCallbacks(lambda _: result.append(True), lambda _: result.append(False))
            d.addBoth(lambda _: done.set())

        reactor.callFromThread(start)  # type: ignore[attr-defined]
        done.wait(10)
        return bool(result and result[0])

    def scenario() -> None:
        broker = start_broker()
        time.sleep(2)
        print("first call ok:", call_once())
        broker.kill()
        broker.wait()
        stop = time.monotonic() + args.down
        while time.monotonic() < stop:
            call_once()
            time.sleep(0.2)
        broker = start_broker()
        while True:
            try:
                socket.create_connection(("127.0.0.1", PORT), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        listening = time.monotonic()
        while not call_once():
            time.sleep(0.1)
        print(f"recovered {time.monotonic() - listening:.1f} s after the broker listened again")
        broker.kill()
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    threading.Thread(target=scenario, daemon=True).start()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
