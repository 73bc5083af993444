"""The event page's label and triage history, made from access records: only changes that took
effect, newest first as listed, enum names as words."""

from __future__ import annotations

from awareness.ingest.v1 import ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.portal.domain.history import LABEL_ACTION, LabelChange, history_request, label_changes


def _record(seconds: int, outcome: str = "OK", **details: str) -> ingest_pb2.AccessRecord:
    return ingest_pb2.AccessRecord(
        name=f"events/record-{seconds}",
        principal=f"apikey:k{seconds}",
        action=LABEL_ACTION,
        resource="events/e-1",
        outcome=outcome,
        time=Timestamp(seconds=seconds),
        details=details,
    )


def test_the_request_asks_for_the_label_records_of_one_event() -> None:
    request = history_request("events/e-1")
    assert (request.action, request.resource) == ("event.label", "events/e-1")
    assert request.page_size == 100


def test_changes_keep_the_order_and_name_what_each_set() -> None:
    changes = label_changes(
        [
            _record(30, label="LABEL_FALSE_POSITIVE", triage_state="TRIAGE_STATE_CLOSED"),
            _record(20, triage_state="TRIAGE_STATE_IN_REVIEW"),
            _record(10, label="LABEL_TRUE_POSITIVE"),
        ]
    )
    assert changes == [
        LabelChange(Timestamp(seconds=30), "apikey:k30", "false positive", "closed"),
        LabelChange(Timestamp(seconds=20), "apikey:k20", "", "in review"),
        LabelChange(Timestamp(seconds=10), "apikey:k10", "true positive", ""),
    ]


def test_refused_calls_and_other_actions_are_not_changes() -> None:
    other = _record(40, label="LABEL_TRUE_POSITIVE")
    other.action = "event.read"
    changes = label_changes(
        [
            other,
            _record(30, outcome="PERMISSION_DENIED"),
            _record(20, outcome="INVALID_ARGUMENT", label="LABEL_TRUE_POSITIVE"),
            _record(10, label="LABEL_TRUE_POSITIVE"),
        ]
    )
    assert [change.principal for change in changes] == ["apikey:k10"]


def test_a_value_this_build_does_not_know_shows_as_recorded() -> None:
    (change,) = label_changes([_record(10, label="LABEL_MAYBE", triage_state="7")])
    assert (change.label, change.triage) == ("LABEL_MAYBE", "7")
