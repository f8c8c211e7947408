# -*- test-case-name: tests.test_protos -*-
# mypy: disable-error-code="no-untyped-call"
"""The generated protobuf/gRPC code is what ``python -m eventgw.protogen`` produces."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from eventgw import protogen


class GeneratedCodeTests(SynchronousTestCase):
    """Checked-in generated files are never stale and never edited by hand."""

    def test_generated_files_are_current(self) -> None:
        """Regenerating into a temporary directory gives exactly the checked-in files."""
        out = tempfile.mkdtemp(prefix="eventgw-protogen-")
        self.addCleanup(shutil.rmtree, out, ignore_errors=True)
        fresh = protogen.generate(out)
        tree = protogen.source_root()
        self.assertEqual(
            fresh, protogen.generated_files(tree),
            "generated file set differs; run `python -m eventgw.protogen`",
        )
        for name in fresh:
            with open(os.path.join(out, name), "rb") as f:
                expected = f.read()
            with open(os.path.join(tree, name), "rb") as f:
                actual = f.read()
            self.assertEqual(actual, expected, f"{name} is stale; run `python -m eventgw.protogen`")

    def test_contract_names(self) -> None:
        """The Event Broker contract's names and field numbers are the fixed ones."""
        from eventgw._proto.cloudevents.v1 import cloudevents_pb2
        from eventgw._proto.eventbroker.v1 import eventbroker_pb2

        service = eventbroker_pb2.DESCRIPTOR.services_by_name["EventBroker"]
        self.assertEqual(service.full_name, "eventbroker.v1.EventBroker")
        self.assertEqual(
            {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods},
            {
                "Publish": ("eventbroker.v1.PublishRequest", "eventbroker.v1.PublishResponse"),
                "PublishBatch": (
                    "eventbroker.v1.PublishBatchRequest", "eventbroker.v1.PublishBatchResponse"
                ),
            },
        )
        event = cloudevents_pb2.CloudEvent.DESCRIPTOR
        self.assertEqual(event.full_name, "io.cloudevents.v1.CloudEvent")
        self.assertEqual(
            {f.name: f.number for f in event.fields},
            {"id": 1, "source": 2, "spec_version": 3, "type": 4, "attributes": 5,
             "binary_data": 6, "text_data": 7, "proto_data": 8},
        )
        value = event.nested_types_by_name["CloudEventAttributeValue"]
        self.assertEqual(
            {f.name: f.number for f in value.fields},
            {"ce_boolean": 1, "ce_integer": 2, "ce_string": 3, "ce_bytes": 4, "ce_uri": 5,
             "ce_uri_ref": 6, "ce_timestamp": 7},
        )
        self.assertEqual(
            eventbroker_pb2.PublishRequest.DESCRIPTOR.fields_by_name["event"].number, 1
        )
        self.assertEqual(
            eventbroker_pb2.PublishBatchRequest.DESCRIPTOR.fields_by_name["events"].number, 1
        )
        self.assertEqual(eventbroker_pb2.PublishResponse.DESCRIPTOR.fields_by_name["id"].number, 1)
        self.assertEqual(
            eventbroker_pb2.PublishBatchResponse.DESCRIPTOR.fields_by_name["ids"].number, 1
        )
