"""An event's label and triage history as the event page shows it, read from the access records.

Ingest keeps only the current label and triage state on the event; every LabelEvent call also
leaves an ``event.label`` access record in the log, with the label and triage state it set (by enum
name; never the note). Those records are the history. Nothing here asks a service.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from awareness.ingest.v1 import ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.portal.domain import display

LABEL_ACTION: Final = "event.label"
# The newest this many records; older ones are for `awareness audit`.
HISTORY_SIZE: Final = 100
# Who may read access records (ListAccessRecords' required permission).
HISTORY_PERMISSION: Final = "gdpr:audit"


# The records name values by enum name ("LABEL_TRUE_POSITIVE"); the page by word ("true positive").
LABEL_WORDS: Final = {
    ingest_pb2.Label.Name(number): word for number, word in display.LABEL_NAMES.items() if word
}
TRIAGE_WORDS: Final = {
    ingest_pb2.TriageState.Name(number): word for number, word in display.TRIAGE_NAMES.items() if word
}


@dataclass(frozen=True, slots=True)
class LabelChange:
    """One change that took effect: when, by whom, and what it set ("" for left unchanged)."""

    time: Timestamp
    principal: str
    label: str
    triage: str


def history_request(event_name: str) -> ingest_pb2.ListAccessRecordsRequest:
    return ingest_pb2.ListAccessRecordsRequest(
        action=LABEL_ACTION, resource=event_name, page_size=HISTORY_SIZE
    )


def label_changes(records: Iterable[ingest_pb2.AccessRecord]) -> list[LabelChange]:
    """The changes among ``records`` (newest first, as ListAccessRecords returns them): refused or
    failed calls are recorded too, but changed nothing, so they are left out."""
    return [
        LabelChange(
            time=record.time,
            principal=record.principal,
            # A value this build does not know shows as recorded.
            label=LABEL_WORDS.get(record.details.get("label", ""), record.details.get("label", "")),
            triage=TRIAGE_WORDS.get(
                record.details.get("triage_state", ""), record.details.get("triage_state", "")
            ),
        )
        for record in records
        if record.action == LABEL_ACTION and record.outcome == "OK"
    ]
