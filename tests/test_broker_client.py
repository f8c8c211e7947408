# mypy: disable-error-code="no-untyped-call"
"""Both Event Broker clients provide the BrokerClient interface, and the factory picks
the one ``event_broker.client`` names."""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from eventgw.config import BROKER_CLIENTS, BrokerUpstream
from eventgw.events.broker import GrpcioBrokerClient
from eventgw.events.client import BrokerClient, new_broker_client
from eventgw.events.h2broker import H2BrokerClient

IMPLEMENTATIONS: tuple[type[Any], ...] = (GrpcioBrokerClient, H2BrokerClient)


def both_are_broker_clients(grpcio: GrpcioBrokerClient, h2: H2BrokerClient) -> list[BrokerClient]:
    """Type-checked only: mypy rejects this if either class stops matching the protocol."""
    first: BrokerClient = grpcio
    second: BrokerClient = h2
    return [first, second]


def protocol_members() -> dict[str, Any]:
    return {name: value for name, value in vars(BrokerClient).items()
            if not name.startswith("_")}


class ProtocolTests(SynchronousTestCase):
    def test_members(self) -> None:
        """The interface is what the /events target uses: target, call, close."""
        self.assertEqual(set(protocol_members()), {"target", "call", "close"})

    def test_both_classes_have_every_member(self) -> None:
        """Each implementation has each member, of the same kind (property or method),
        and its methods accept the protocol's arguments."""
        for implementation in IMPLEMENTATIONS:
            for name, member in protocol_members().items():
                found = inspect.getattr_static(implementation, name, None)
                self.assertIsNotNone(found, f"{implementation.__name__}.{name}")
                if isinstance(member, property):
                    self.assertIsInstance(found, property, f"{implementation.__name__}.{name}")
                    continue
                self.assertTrue(callable(found), f"{implementation.__name__}.{name}")
                wanted = list(inspect.signature(member).parameters)
                signature = inspect.signature(found)
                # Every parameter of the protocol's method is there, in order, by name.
                self.assertEqual(list(signature.parameters)[: len(wanted)], wanted,
                                 f"{implementation.__name__}.{name}")
                signature.bind(*wanted)


class FactoryTests(TestCase):
    def test_each_kind(self) -> None:
        """``grpcio`` and ``h2`` give the matching class, aimed at the configured
        broker; every configurable kind is covered."""
        upstream = BrokerUpstream(target="127.0.0.1:1", tls=False)
        made = {}
        for kind in BROKER_CLIENTS:
            client = new_broker_client(upstream, kind, reactor=reactor)
            self.addCleanup(client.close)
            made[kind] = type(client)
            self.assertEqual(client.target, "127.0.0.1:1")
        self.assertEqual(made, {"grpcio": GrpcioBrokerClient, "h2": H2BrokerClient})

    def test_unknown_kind(self) -> None:
        """Any other name is a ValueError naming the choices."""
        upstream = BrokerUpstream(target="127.0.0.1:1", tls=False)
        error = self.assertRaises(ValueError, new_broker_client, upstream, "curl")
        self.assertIn("grpcio", str(error))
