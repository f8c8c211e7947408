"""The Python peer for the gRPC rows: a plain grpcio proxy.

A ``grpc.aio`` server whose generic handler relays every method, as raw bytes (no
(de)serialisation), through one ``grpc.aio`` channel to the backend: request and
response messages, metadata, deadline, trailing metadata and status.  It listens with
TLS (ALPN h2) and on cleartext h2c.

Usage: py_grpc_proxy.py --tls-port N --h2c-port M --upstream HOST:PORT --cert PEM --key PEM
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

# Metadata that grpcio sets itself on the upstream call.
_OWN_METADATA = frozenset({"user-agent", "grpc-accept-encoding", "grpc-encoding"})


class Passthrough(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Relays any method to the upstream channel as a bidi-streaming call of raw bytes."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._stubs: dict[str, Callable[..., Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._stubs[method] = self._channel.stream_stream(method)
        return grpc.stream_stream_rpc_method_handler(self._relay(stub))

    @staticmethod
    def _relay(stub: Callable[..., Any]) -> Callable[..., AsyncIterator[bytes]]:
        async def relay(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
            metadata = [
                (key, value)
                for key, value in context.invocation_metadata()
                if key not in _OWN_METADATA
            ]
            call = stub(requests, metadata=metadata, timeout=context.time_remaining())
            try:
                async for reply in call:
                    yield reply
            except grpc.aio.AioRpcError as error:
                context.set_trailing_metadata(error.trailing_metadata() or ())
                await context.abort(error.code(), error.details() or "")
            context.set_trailing_metadata(await call.trailing_metadata() or ())

        return relay


async def serve(args: argparse.Namespace) -> None:
    channel = grpc.aio.insecure_channel(args.upstream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([Passthrough(channel)])
    credentials = grpc.ssl_server_credentials([(args.key.read_bytes(), args.cert.read_bytes())])
    server.add_secure_port(f"127.0.0.1:{args.tls_port}", credentials)
    server.add_insecure_port(f"127.0.0.1:{args.h2c_port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tls-port", type=int, required=True)
    parser.add_argument("--h2c-port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
