"""Call the demo Master API's gRPC service through the gateway, all four RPC kinds.

``python -m demo.client --target localhost:9001 --tls`` (TLS, ALPN h2, trusting the
gateway's development certificate) or ``--target localhost:9080`` (h2c).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc

from demo.masterapi._proto import demo_pb2, demo_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
DEV_CERT = ROOT / "run" / "dev-cert" / "gateway-dev.pem"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="localhost:9001")
    parser.add_argument("--tls", action="store_true", help="use TLS (the demo's dev cert)")
    parser.add_argument("--ca", default=str(DEV_CERT), help="CA/cert file to trust with --tls")
    args = parser.parse_args(argv)

    if args.tls:
        credentials = grpc.ssl_channel_credentials(Path(args.ca).read_bytes())
        channel = grpc.secure_channel(args.target, credentials)
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        items = demo_pb2_grpc.ItemsStub(channel)
        metadata = [("x-request-id", "demo-client-1")]

        item = items.GetItem(demo_pb2.GetItemRequest(id="42"), timeout=5, metadata=metadata)
        print(f"unary         GetItem     -> id={item.id} name={item.name!r}")

        sent = (demo_pb2.Item(id=str(i), name=f"item {i}") for i in range(3))
        summary = items.PutItems(sent, timeout=5)
        print(f"client stream PutItems    -> count={summary.count} ids={list(summary.ids)}")

        names = [i.name for i in items.WatchItems(demo_pb2.WatchItemsRequest(count=3), timeout=5)]
        print(f"server stream WatchItems  -> {names}")

        echoed = items.SyncItems(
            iter([demo_pb2.Item(id="a", name="alpha"), demo_pb2.Item(id="b", name="beta")]),
            timeout=5,
        )
        print(f"bidi stream   SyncItems   -> {[i.name for i in echoed]}")

        try:
            items.GetItem(
                demo_pb2.GetItemRequest(
                    id="x", behaviour=demo_pb2.Behaviour(fail_code=5, fail_message="no item x")
                ),
                timeout=5,
            )
        except grpc.RpcError as e:
            print(f"error status  GetItem     -> {e.code().name}: {e.details()}")


if __name__ == "__main__":
    main()
