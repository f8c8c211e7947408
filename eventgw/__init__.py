"""eventgw: one TLS port in front of a Master API (HTTP and gRPC) and an Event Broker.

Core module: the package itself imports nothing.

The package is split into a sans-IO core (no Twisted, grpc, txaio or socket imports,
no clock) and a thin Twisted shell; see ``tests/test_layering.py`` for the rule.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
