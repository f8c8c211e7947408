# -*- test-case-name: tests.test_grpc_relay -*-
"""A grpcio client for the demo Master API: one call of each RPC kind.

Run it against the gateway (or the demo server directly)::

    python -m demo.masterapi.grpc_client --target 127.0.0.1:9080            # h2c
    python -m demo.masterapi.grpc_client --target localhost:9001 \\
        --ca-file run/dev-cert/gateway-dev.pem                              # TLS, ALPN h2
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import grpc

from demo.masterapi._proto import demo_pb2, demo_pb2_grpc

__all__ = ["main", "run"]


def run(target: str, ca_file: str | None = None, timeout: float = 5.0) -> list[str]:
    """Make the four calls through ``target``; return one line per call."""
    if ca_file is None:
        channel = grpc.insecure_channel(target)
    else:
        with open(ca_file, "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(target, credentials)
    lines: list[str] = []
    with channel:
        stub = demo_pb2_grpc.ItemsStub(channel)  # type: ignore[no-untyped-call]
        item, call = stub.GetItem.with_call(
            demo_pb2.GetItemRequest(id="42", payload_size=8),
            metadata=[("x-echo-request-id", "demo-1")],
            timeout=timeout,
        )
        echoed = dict(call.initial_metadata()).get("x-echo-request-id")
        lines.append(f"GetItem (unary): {item.name!r}, echoed metadata {echoed!r}")

        def items() -> Iterator[demo_pb2.Item]:
            for n in range(3):
                yield demo_pb2.Item(id=str(n), payload=b"." * 100)

        summary = stub.PutItems(items(), timeout=timeout)
        lines.append(
            f"PutItems (client streaming): {summary.count} items, {summary.total_bytes} bytes"
        )
        watched = stub.WatchItems(demo_pb2.WatchItemsRequest(count=3), timeout=timeout)
        lines.append(f"WatchItems (server streaming): ids {[i.id for i in watched]}")
        synced = stub.SyncItems(
            iter([demo_pb2.Item(name="alpha"), demo_pb2.Item(name="beta")]), timeout=timeout
        )
        lines.append(f"SyncItems (bidirectional): {[i.name for i in synced]}")
        try:
            stub.GetItem(
                demo_pb2.GetItemRequest(
                    behaviour=demo_pb2.Behaviour(fail_code=5, fail_message="no item 7")
                ),
                timeout=timeout,
            )
        except grpc.RpcError as e:
            lines.append(f"GetItem (failing): {e.code().name} {e.details()!r}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Call the demo Master API over gRPC.")
    parser.add_argument("--target", default="127.0.0.1:9080", help="host:port to call")
    parser.add_argument(
        "--ca-file", help="PEM CA/certificate to trust: use TLS (ALPN h2) instead of h2c"
    )
    args = parser.parse_args(argv)
    for line in run(args.target, args.ca_file):
        print(line)


if __name__ == "__main__":
    main()
