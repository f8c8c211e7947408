"""A demo Event Broker: ``python -m demo.eventbroker --port 50052``.

A grpcio server built from the gateway's ``protos/`` (``eventbroker.v1.EventBroker``),
keeping the last events in memory and logging each one.  :class:`MemoryBroker` is also
the base of the recording broker the tests run in-process.
"""

from demo.eventbroker.server import MemoryBroker, main, serve

__all__ = ["MemoryBroker", "main", "serve"]
