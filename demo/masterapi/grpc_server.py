# -*- test-case-name: tests.test_grpc_relay -*-
"""The demo Master API's gRPC server: ``python -m demo.masterapi.grpc_server --port N``.

A plain grpcio server (thread pool), used by the README's examples and as the
Master API of the gRPC relay's end-to-end tests.  Each method honours the request's
:class:`Behaviour` (delay, failure with message and ``grpc-status-details-bin``) and
echoes request metadata whose key starts with ``x-echo-`` back: as initial metadata
under the same key, and as trailing metadata with the prefix ``x-trailer-`` instead.
``PutItems`` takes ``x-delay-ms`` metadata: it then reads its stream that slowly.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Final

import grpc
from google.rpc import status_pb2  # type: ignore[import-untyped]

from demo.masterapi._proto import demo_pb2, demo_pb2_grpc

__all__ = ["ItemsServicer", "main", "serve"]

# Large enough for the 4 MiB messages the relay's tests send both ways.
MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
ECHO_PREFIX: Final = "x-echo-"


class ItemsServicer(demo_pb2_grpc.ItemsServicer):
    """The demo service.

    :ivar cancelled: ``(method, monotonic time)`` for every call that ended because
        the client (or the gateway) cancelled it, so tests can see cancellations.
    :ivar on_cancel: called with the method name when a call is cancelled.
    """

    def __init__(self, on_cancel: Callable[[str], None] | None = None) -> None:
        self.cancelled: list[tuple[str, float]] = []
        self.on_cancel = on_cancel
        self.calls: list[str] = []
        self._lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------

    def _start(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls.append(method)

        context.add_callback(lambda: self._maybe_cancelled(method, context))
        echoed = [
            (key, value)
            for key, value in context.invocation_metadata()
            if key.startswith(ECHO_PREFIX)
        ]
        if echoed:
            context.send_initial_metadata(echoed)
            context.set_trailing_metadata(
                [("x-trailer-" + key[len(ECHO_PREFIX) :], value) for key, value in echoed]
            )

    def _maybe_cancelled(self, method: str, context: grpc.ServicerContext) -> None:
        # add_callback fires on every termination; a cancelled RPC is one that the
        # server did not finish itself.
        if _finished(context):
            return
        self._cancelled(method)

    def _cancelled(self, method: str) -> None:
        with self._lock:
            self.cancelled.append((method, time.monotonic()))
        if self.on_cancel is not None:
            self.on_cancel(method)

    @staticmethod
    def _behave(behaviour: demo_pb2.Behaviour, context: grpc.ServicerContext) -> bool:
        """Apply delay and failure; ``False`` when the call is already over."""
        if behaviour.delay_ms and not _sleep(context, behaviour.delay_ms / 1000.0):
            return False
        if behaviour.fail_code:
            code = _code(behaviour.fail_code)
            if behaviour.fail_detail:
                status = status_pb2.Status(
                    code=behaviour.fail_code, message=behaviour.fail_message
                )
                status.details.add().Pack(demo_pb2.Item(name=behaviour.fail_detail))
                context.set_trailing_metadata(
                    [("grpc-status-details-bin", status.SerializeToString())]
                )
            _finish(context)
            context.abort(code, behaviour.fail_message)
        return True

    # -- the four methods ---------------------------------------------------------

    def GetItem(
        self, request: demo_pb2.GetItemRequest, context: grpc.ServicerContext
    ) -> demo_pb2.Item:
        self._start("GetItem", context)
        if not self._behave(request.behaviour, context):
            return demo_pb2.Item()
        _finish(context)
        return demo_pb2.Item(
            id=request.id, name="item " + request.id, payload=b"x" * request.payload_size
        )

    def PutItems(
        self, request_iterator: Iterator[demo_pb2.Item], context: grpc.ServicerContext
    ) -> demo_pb2.PutItemsReply:
        self._start("PutItems", context)
        delay = _metadata_delay(context)
        reply = demo_pb2.PutItemsReply()
        for item in request_iterator:
            if delay and not _sleep(context, delay):
                return reply
            reply.count += 1
            reply.total_bytes += len(item.payload)
            reply.ids.append(item.id)
        _finish(context)
        return reply

    def WatchItems(
        self, request: demo_pb2.WatchItemsRequest, context: grpc.ServicerContext
    ) -> Iterator[demo_pb2.Item]:
        self._start("WatchItems", context)
        payload = b"w" * request.payload_size
        for index in range(request.count):
            if request.behaviour.delay_ms and not _sleep(
                context, request.behaviour.delay_ms / 1000.0
            ):
                return
            yield demo_pb2.Item(id=str(index), name="watched", payload=payload)
        behaviour = demo_pb2.Behaviour()
        behaviour.CopyFrom(request.behaviour)
        behaviour.delay_ms = 0
        self._behave(behaviour, context)
        _finish(context)

    def SyncItems(
        self, request_iterator: Iterator[demo_pb2.Item], context: grpc.ServicerContext
    ) -> Iterator[demo_pb2.Item]:
        self._start("SyncItems", context)
        for item in request_iterator:
            yield demo_pb2.Item(id=item.id, name=item.name.upper(), payload=item.payload)
        _finish(context)


def _metadata_delay(context: grpc.ServicerContext) -> float:
    """``x-delay-ms`` request metadata: how long a streaming method takes per message."""
    for key, value in context.invocation_metadata():
        if key == "x-delay-ms":
            try:
                return int(value) / 1000.0
            except ValueError:
                return 0.0
    return 0.0


def _code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    return grpc.StatusCode.UNKNOWN


def _finish(context: grpc.ServicerContext) -> None:
    context._demo_finished = True


def _finished(context: grpc.ServicerContext) -> bool:
    return bool(getattr(context, "_demo_finished", False))


def _sleep(context: grpc.ServicerContext, seconds: float) -> bool:
    """Sleep, waking early when the call ends; ``True`` if it is still active."""
    deadline = time.monotonic() + seconds
    while context.is_active():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.005))
    return False


def serve(
    port: int = 0,
    host: str = "127.0.0.1",
    servicer: ItemsServicer | None = None,
    *,
    max_workers: int = 32,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int, ItemsServicer]:
    """Start the server; return it, the bound port and the servicer."""
    servicer = servicer if servicer is not None else ItemsServicer()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    demo_pb2_grpc.add_ItemsServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    address = f"{host}:{port}"
    if credentials is None:
        bound = server.add_insecure_port(address)
    else:
        bound = server.add_secure_port(address, credentials)
    server.start()
    return server, bound, servicer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The demo Master API's gRPC server.")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    server, port, _ = serve(args.port, args.host)
    print(f"demo Master API (gRPC) listening on {args.host}:{port}", flush=True)
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(1).wait()


if __name__ == "__main__":
    main()
