"""The generic request check: every value no store can hold is named by its field path."""

from __future__ import annotations

import importlib

import pytest
from awareness.gdpr.v1 import gdpr_pb2
from awareness.ingest.v1 import ingest_pb2
from awareness.policy.v1 import policy_pb2
from awareness.scoring.v1 import scoring_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import String

from services.runtime.errors import InvalidArgumentError
from services.runtime.validation import check_request, declared_max_lengths, message_violations


def fields(message: object, **kwargs: object) -> set[str]:
    return {v.field for v in message_violations(message, **kwargs)}  # type: ignore[arg-type]


def test_nul_is_found_in_nested_repeated_and_map_fields() -> None:
    request = policy_pb2.EvaluateEventsRequest(
        events=[
            policy_pb2.EvaluationInput(event_id="e1", source="ok", details={"k": "v"}),
            policy_pb2.EvaluationInput(
                event_id="e2", source="bad\x00", details={"k\x00": "v", "k2": "v\x00"}
            ),
        ]
    )
    assert fields(request) == {"events[1].source", "events[1].details"}
    assert len(message_violations(request)) == 3  # the key and the value are two violations


def test_declared_maximum_is_enforced_and_one_more_character_is_refused() -> None:
    assert fields(gdpr_pb2.GrantConsentRequest(subject="a", purpose="p", request_id="r" * 128)) == set()
    refused = message_violations(gdpr_pb2.GrantConsentRequest(request_id="r" * 129))
    assert [(v.field, v.description) for v in refused] == [("request_id", "must be at most 128 characters")]


def test_unknown_enum_numbers_and_impossible_times_are_refused() -> None:
    request = ingest_pb2.LabelEventRequest(name="events/x", label=70_000)  # type: ignore[arg-type]
    assert fields(request) == {"label"}
    stamp = Timestamp(seconds=2**62, nanos=-1)
    assert fields(ingest_pb2.ListEventsRequest(start_time=stamp)) == {"start_time"}
    assert len(message_violations(ingest_pb2.ListEventsRequest(start_time=stamp))) == 2
    assert fields(ingest_pb2.ListEventsRequest(start_time=Timestamp(seconds=253_402_300_799))) == set()


def test_skipped_fields_are_left_to_the_service() -> None:
    request = ingest_pb2.AppendEventsRequest(events=[ingest_pb2.Event(source="\x00")])
    assert fields(request) == {"events[0].source"}
    skip = frozenset({"awareness.ingest.v1.AppendEventsRequest.events"})
    assert fields(request, skip=skip) == set()


def test_check_request_raises_invalid_argument_with_every_violation() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        check_request(scoring_pb2.TrainModelRequest(request_id="x" * 200, algorithms=["a\x00"]))
    assert raised.value.reason == "INVALID_FIELD_VALUE"
    assert {v.field for v in raised.value.violations} == {"request_id", "algorithms[0]"}


# Where each declared maximum is stored: (service, model class, column).
COLUMNS = {
    "awareness.gdpr.v1.SubjectKeyLookup.event_type": ("gdpr", "DataKeyEventType", "event_type"),
    "awareness.gdpr.v1.EraseSubjectRequest.request_id": ("gdpr", "ErasureRecordRow", "request_id"),
    "awareness.gdpr.v1.GrantConsentRequest.request_id": ("gdpr", "ConsentRecordRow", "request_id"),
    "awareness.gdpr.v1.WithdrawConsentRequest.request_id": ("gdpr", "ConsentRecordRow", "request_id"),
    "awareness.gdpr.v1.RetentionRule.event_type": ("gdpr", "RetentionRuleRow", "event_type"),
    "awareness.gdpr.v1.ApplyRetentionRequest.request_id": ("gdpr", "RetentionRunRow", "request_id"),
    "awareness.gdpr.v1.RotateKekRequest.request_id": ("gdpr", "KekRotationRow", "request_id"),
    "awareness.gdpr.v1.DirectoryEntry.department": ("gdpr", "DirectoryEntryRow", "department"),
    "awareness.gdpr.v1.ImportDirectoryRequest.import_id": ("gdpr", "DirectoryEntryRow", "import_id"),
    "awareness.policy.v1.CreatePolicyRequest.request_id": ("policy", "PolicyVersionRow", "request_id"),
    "awareness.policy.v1.CreatePolicyRevisionRequest.request_id": (
        "policy",
        "PolicyVersionRow",
        "request_id",
    ),
    "awareness.scoring.v1.ScoringInput.event_id": ("scoring", "ShadowScoreRow", "event_id"),
    "awareness.scoring.v1.PromoteModelRequest.request_id": ("scoring", "ModelRow", "request_id"),
    "awareness.scoring.v1.TrainModelRequest.request_id": ("scoring", "ModelRow", "request_id"),
    "awareness.signing.v1.SignCheckpointRequest.origin": ("signing", "SignedCheckpointRow", "origin"),
    "awareness.signing.v1.RotateKeyRequest.request_id": ("signing", "KeyRotationRow", "request_id"),
    "awareness.ingest.v1.ListAccessRecordsRequest.principal": ("ingest", "AccessRecordIndex", "principal"),
    "awareness.ingest.v1.ListAccessRecordsRequest.action": ("ingest", "AccessRecordIndex", "action"),
    "awareness.ingest.v1.ListAccessRecordsRequest.resource": ("ingest", "AccessRecordIndex", "resource"),
    "awareness.ingest.v1.ListAccessRecordsRequest.subject_pseudonym": (
        "ingest",
        "AccessRecordIndex",
        "pseudonym",
    ),
}


def test_every_declared_maximum_is_the_width_of_its_column() -> None:
    requests: list[Descriptor] = []
    for name in ("gdpr", "ingest", "policy", "scoring", "signing"):
        module = importlib.import_module(f"awareness.{name}.v1.{name}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            requests.extend(method.input_type for method in service.methods)
    declared = declared_max_lengths(requests)
    assert set(declared) == set(COLUMNS)
    for field, limit in declared.items():
        service, model, column = COLUMNS[field]
        table = getattr(importlib.import_module(f"services.{service}.models"), model).__table__
        kind = table.columns[column].type
        assert isinstance(kind, String) and kind.length == limit, field
