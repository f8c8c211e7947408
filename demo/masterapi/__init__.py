"""The demo Master API (its gRPC side lives in :mod:`demo.masterapi.grpc_server`)."""
