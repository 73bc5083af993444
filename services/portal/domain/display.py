"""How the portal names what the contracts hold: enums as words, times as people read them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from awareness.ingest.v1 import ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp

RISK_LEVELS: Final = {
    ingest_pb2.RISK_LEVEL_UNSPECIFIED: "",
    ingest_pb2.RISK_LEVEL_LOW: "low",
    ingest_pb2.RISK_LEVEL_MODERATE: "moderate",
    ingest_pb2.RISK_LEVEL_HIGH: "high",
    ingest_pb2.RISK_LEVEL_CRITICAL: "critical",
}
SEVERITIES: Final = {
    ingest_pb2.SEVERITY_UNSPECIFIED: "",
    ingest_pb2.SEVERITY_INFO: "info",
    ingest_pb2.SEVERITY_LOW: "low",
    ingest_pb2.SEVERITY_MEDIUM: "medium",
    ingest_pb2.SEVERITY_HIGH: "high",
}
LABEL_NAMES: Final = {
    ingest_pb2.LABEL_UNSPECIFIED: "",
    ingest_pb2.LABEL_TRUE_POSITIVE: "true positive",
    ingest_pb2.LABEL_FALSE_POSITIVE: "false positive",
}
TRIAGE_NAMES: Final = {
    ingest_pb2.TRIAGE_STATE_UNSPECIFIED: "",
    ingest_pb2.TRIAGE_STATE_NEW: "new",
    ingest_pb2.TRIAGE_STATE_IN_REVIEW: "in review",
    ingest_pb2.TRIAGE_STATE_CLOSED: "closed",
}
RECEIPT_STATES: Final = {
    ingest_pb2.Receipt.STATE_UNSPECIFIED: "unknown",
    ingest_pb2.Receipt.STATE_ACCEPTED: "accepted, not yet in the tree",
    ingest_pb2.Receipt.STATE_INTEGRATED: "in the tree, not yet in a checkpoint",
    ingest_pb2.Receipt.STATE_CHECKPOINTED: "in a signed checkpoint",
}
PERSONAL_STATES: Final = {
    ingest_pb2.Event.PERSONAL_DATA_STATE_UNSPECIFIED: "",
    ingest_pb2.Event.PERSONAL_DATA_STATE_AVAILABLE: "available",
    ingest_pb2.Event.PERSONAL_DATA_STATE_ERASED: "erased",
    ingest_pb2.Event.PERSONAL_DATA_STATE_UNAVAILABLE: "unavailable right now",
    ingest_pb2.Event.PERSONAL_DATA_STATE_WITHHELD: "withheld (your role may not read it)",
}
SCORING_STATES: Final = {
    ingest_pb2.EventMetadata.SCORING_STATE_UNSPECIFIED: "",
    ingest_pb2.EventMetadata.SCORING_STATE_PENDING: "pending",
    ingest_pb2.EventMetadata.SCORING_STATE_SCORED: "scored",
    ingest_pb2.EventMetadata.SCORING_STATE_SKIPPED: "not scored",
    ingest_pb2.EventMetadata.SCORING_STATE_FAILED: "scoring failed",
}


def when(stamp: Timestamp) -> str:
    """``2026-12-06 04:31 UTC``, or empty for an unset time."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(stamp: Timestamp) -> str:
    """Machine-readable time for ``<time datetime=...>``."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).isoformat()


def day_of(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).date().isoformat()


def now() -> datetime:
    return datetime.now(UTC)


def event_id_of(name: str) -> str:
    return name.removeprefix("events/")


ERASED: Final = ingest_pb2.Event.PERSONAL_DATA_STATE_ERASED
