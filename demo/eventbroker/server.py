# -*- test-case-name: tests.test_events -*-
"""The demo Event Broker: a grpcio server that keeps the last events in memory.

Not part of the gateway (it runs its own grpcio server threads, no reactor).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import grpc
from google.protobuf import json_format

from eventgw._proto.cloudevents.v1.cloudevents_pb2 import CloudEvent
from eventgw._proto.eventbroker.v1 import eventbroker_pb2, eventbroker_pb2_grpc

__all__ = ["DEFAULT_KEEP", "MemoryBroker", "main", "serve"]

log = logging.getLogger("demo.eventbroker")

# Enough to look at recent traffic without growing without bound.
DEFAULT_KEEP: Final = 1000


class MemoryBroker(eventbroker_pb2_grpc.EventBrokerServicer):
    """Accepts every event, remembers the last ``keep`` of them, answers with their ids.

    Thread-safe: grpcio calls the methods from its worker threads.
    """

    def __init__(
        self, keep: int = DEFAULT_KEEP, *, quiet: bool = False, record: str | None = None
    ) -> None:
        self.events: deque[CloudEvent] = deque(maxlen=keep)
        self.lock = threading.Lock()
        self.quiet = quiet
        # With ``record``, every accepted event's id is appended to that file (one a
        # line) before the call is answered, so a killed broker loses none it accepted.
        self._record_fd = (
            os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if record else None
        )

    def store(self, events: Sequence[CloudEvent], peer: str) -> list[str]:
        with self.lock:
            self.events.extend(events)
            if self._record_fd is not None:
                os.write(self._record_fd, "".join(e.id + "\n" for e in events).encode())
        if not self.quiet:
            for event in events:
                log.info(
                    "event from %s: %s", peer,
                    json_format.MessageToJson(event, indent=None, preserving_proto_field_name=True),
                )
        return [event.id for event in events]

    def Publish(  # the gRPC method name
        self, request: eventbroker_pb2.PublishRequest, context: grpc.ServicerContext
    ) -> eventbroker_pb2.PublishResponse:
        ids = self.store([request.event], context.peer())
        return eventbroker_pb2.PublishResponse(id=ids[0])

    def PublishBatch(  # the gRPC method name
        self, request: eventbroker_pb2.PublishBatchRequest, context: grpc.ServicerContext
    ) -> eventbroker_pb2.PublishBatchResponse:
        ids = self.store(list(request.events), context.peer())
        return eventbroker_pb2.PublishBatchResponse(ids=ids)


def serve(
    broker: MemoryBroker, port: int = 0, host: str = "127.0.0.1", workers: int = 16
) -> tuple[grpc.Server, int]:
    """Start a grpcio server for ``broker``; return it and the bound port."""
    server = grpc.server(ThreadPoolExecutor(max_workers=workers))
    eventbroker_pb2_grpc.add_EventBrokerServicer_to_server(broker, server)  # type: ignore[no-untyped-call]
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    server.start()
    return server, bound


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.eventbroker", description="Run the demo Event Broker."
    )
    parser.add_argument("--port", type=int, default=50052, help="port (default 50052)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--keep", type=int, default=DEFAULT_KEEP,
                        help=f"events kept in memory (default {DEFAULT_KEEP})")
    parser.add_argument("--quiet", action="store_true", help="do not log each event")
    parser.add_argument("--record", metavar="FILE",
                        help="append the id of every accepted event to FILE")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    broker = MemoryBroker(options.keep, quiet=options.quiet, record=options.record)
    try:
        server, port = serve(broker, options.port, options.host)
    except (OSError, RuntimeError) as e:
        log.error("cannot start: %s", e)
        return 1
    log.info("Event Broker listening on %s:%d", options.host, port)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=2).wait()
    return 0
