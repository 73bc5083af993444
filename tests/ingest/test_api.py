"""The ingest servicer's batch answer, built in place: one result per event, in order."""

from __future__ import annotations

import grpc
from awareness.ingest.v1 import ingest_pb2

from services.ingest.api import _response
from services.ingest.domain.errors import ValidationError
from services.ingest.service import Accepted
from services.runtime.errors import FieldViolation
from services.runtime.timestamps import timestamp_from_us

RECEIVED_US = 1_765_000_000_123_456


def test_a_batch_answer_carries_each_receipt_and_each_refusal_in_order() -> None:
    new = Accepted("a", b"\x01" * 32, RECEIVED_US, leaf_index=None, replayed=False)
    replayed = Accepted("b", b"\x02" * 32, 7, leaf_index=41, replayed=True)
    refused = ValidationError([FieldViolation("events[2].type", "unknown")])

    results = _response([new, replayed, refused]).results

    assert [result.index for result in results] == [0, 1, 2]
    first, second, third = results
    assert (first.receipt.event_id, first.receipt.leaf_hash, first.replayed) == ("a", b"\x01" * 32, False)
    assert first.receipt.receive_time == timestamp_from_us(RECEIVED_US)
    assert first.receipt.state == ingest_pb2.Receipt.STATE_ACCEPTED
    assert not first.receipt.HasField("leaf_index")
    assert (second.receipt.event_id, second.replayed, second.receipt.leaf_index) == ("b", True, 41)
    assert second.receipt.receive_time == timestamp_from_us(7)
    assert second.receipt.state == ingest_pb2.Receipt.STATE_INTEGRATED
    assert [result.WhichOneof("result") for result in results] == ["receipt", "receipt", "error"]
    assert third.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
