"""HTTP -> protobuf request building and the proto3 JSON mapping."""

from __future__ import annotations

import pytest
from awareness.ingest.v1 import ingest_pb2
from awareness.policy.v1 import policy_pb2

from services.gateway.domain.transcode import RequestError, build_request, strict_json_loads, to_json


def test_strict_json_refuses_duplicate_keys_at_any_depth() -> None:
    with pytest.raises(RequestError) as caught:
        strict_json_loads(b'{"a": {"b": 1, "b": 2}}')
    assert caught.value.field == "b"


@pytest.mark.parametrize("raw", [b"{", b'{"a": NaN}', b"\xff\xfe", b'{"a": Infinity}'])
def test_strict_json_refuses_malformed_documents(raw: bytes) -> None:
    with pytest.raises(RequestError):
        strict_json_loads(raw)


def test_body_star_path_and_repeated_query() -> None:
    request = build_request(
        ingest_pb2.LabelEventRequest(),
        body_field="*",
        body={"label": "LABEL_FALSE_POSITIVE", "note": "benign"},
        path_values={"name": "events/e1"},
        query=[],
    )
    assert request.name == "events/e1"
    assert request.label == ingest_pb2.LABEL_FALSE_POSITIVE


def test_query_cannot_set_fields_bound_by_body_or_path() -> None:
    with pytest.raises(RequestError) as caught:
        build_request(
            ingest_pb2.LabelEventRequest(),
            body_field="*",
            body={},
            path_values={"name": "events/e1"},
            query=[("note", "x")],
        )
    assert caught.value.field == "note"
    with pytest.raises(RequestError):
        build_request(
            ingest_pb2.GetEventRequest(),
            body_field="",
            body=None,
            path_values={"name": "events/e1"},
            query=[("name", "x")],
        )


def test_nested_query_fields_and_proto_or_json_names() -> None:
    request = build_request(
        policy_pb2.UpdatePolicyRequest(),
        body_field="policy",
        body={"title": "T"},
        path_values={"policy.name": "policies/p"},
        query=[("update_mask", "title,rule")],
    )
    assert request.policy.name == "policies/p"
    assert list(request.update_mask.paths) == ["title", "rule"]


def test_non_repeated_query_field_given_twice_is_refused() -> None:
    with pytest.raises(RequestError) as caught:
        build_request(
            ingest_pb2.ListEventsRequest(),
            body_field="",
            body=None,
            path_values={},
            query=[("type", "a"), ("type", "b")],
        )
    assert caught.value.field == "type"


def test_to_json_uses_lower_camel_case_and_int64_strings() -> None:
    receipt = ingest_pb2.Receipt(event_id="e", leaf_index=2**40, state=ingest_pb2.Receipt.STATE_INTEGRATED)
    assert to_json(receipt) == {"eventId": "e", "leafIndex": str(2**40), "state": "STATE_INTEGRATED"}
