"""The ingest service layer: the append path (``append``: validate, seal, group commit) and every
read (``reads``: events, receipts, checkpoints, proofs, gdpr's and scoring's internal reads;
``access``: the access records)."""

from services.ingest.service.access import AccessRecordReader
from services.ingest.service.append import (
    MAX_BATCH_EVENTS,
    Accepted,
    AppendOutcome,
    Committer,
    EnrichmentItem,
    LogWriter,
    PendingRow,
    receipt_of,
)
from services.ingest.service.reads import EventReader

__all__ = [
    "MAX_BATCH_EVENTS",
    "Accepted",
    "AccessRecordReader",
    "AppendOutcome",
    "Committer",
    "EnrichmentItem",
    "EventReader",
    "LogWriter",
    "PendingRow",
    "receipt_of",
]
