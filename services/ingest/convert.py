"""Conversions between protobuf messages and the ingest domain and stored rows."""

from __future__ import annotations

import json
from datetime import datetime

from awareness.ingest.v1 import ingest_pb2
from awareness.scoring.v1 import scoring_pb2
from awareness.signing.v1 import signing_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.evidence.envelope import PersonalFields
from services.ingest.domain.events import EventInput, Severity
from services.ingest.domain.history import SubjectHistory
from services.ingest.domain.records import decode_dimensions
from services.ingest.models import Checkpoint, EventMetadata, EventRecord
from services.ingest.repository import from_us
from services.runtime.timestamps import timestamp_from_us, timestamp_to_us

Receipt = ingest_pb2.Receipt
PersonalDataState = ingest_pb2.Event.PersonalDataState


def timestamp_to_datetime(stamp: Timestamp) -> datetime:
    return from_us(timestamp_to_us(stamp))


def event_input(message: ingest_pb2.Event, *, subject: str | None = None) -> EventInput:
    """The domain view of a submitted event (SEVERITY_UNSPECIFIED counts as SEVERITY_INFO)."""
    occurred_at = timestamp_to_datetime(message.occurred_at) if message.HasField("occurred_at") else None
    return EventInput(
        type=message.type,
        source=message.source,
        subject=message.subject if subject is None else subject,
        occurred_at=occurred_at,
        severity=int(message.severity) or int(Severity.INFO),
        summary=message.summary,
        details=dict(message.details),
        event_id=message.event_id or None,
    )


def checkpoint_message(checkpoint: Checkpoint) -> signing_pb2.SignedCheckpoint:
    return signing_pb2.SignedCheckpoint(
        origin=checkpoint.origin,
        tree_size=checkpoint.tree_size,
        root_hash=bytes(checkpoint.root_hash),
        timestamp=timestamp_from_us(checkpoint.signed_time_us),
        note=checkpoint.note,
        key_id=checkpoint.key_id,
        timestamp_token=bytes(checkpoint.timestamp_token),
        tsa=checkpoint.tsa,
    )


def receipt_message(
    *,
    event_id: str,
    leaf_hash: bytes,
    receive_time_us: int,
    leaf_index: int | None,
    checkpoint: Checkpoint | None,
    receive_time: Timestamp | None = None,
    into: ingest_pb2.Receipt | None = None,
) -> ingest_pb2.Receipt:
    """`receive_time`, when given, is timestamp_from_us(receive_time_us) made once by the caller;
    `into`, an empty receipt to fill in place (a field of a batch's answer: one built apart would
    be copied in)."""
    receipt = ingest_pb2.Receipt() if into is None else into
    receipt.event_id = event_id
    receipt.leaf_hash = leaf_hash
    if receive_time is None:
        receive_time = timestamp_from_us(receive_time_us)
    receipt.receive_time.CopyFrom(receive_time)
    receipt.state = Receipt.STATE_ACCEPTED
    if leaf_index is not None:
        receipt.leaf_index = leaf_index
        receipt.state = Receipt.STATE_INTEGRATED
        if checkpoint is not None:
            receipt.state = Receipt.STATE_CHECKPOINTED
            receipt.checkpoint.CopyFrom(checkpoint_message(checkpoint))
    return receipt


def metadata_message(metadata: EventMetadata) -> ingest_pb2.EventMetadata:
    message = ingest_pb2.EventMetadata(
        risk_score=metadata.risk_score or 0.0,
        risk_level=metadata.risk_level,  # type: ignore[arg-type]
        model_version=metadata.model_version,
        scoring_state=metadata.scoring_state,  # type: ignore[arg-type]
        scoring_note=metadata.scoring_note,
        evaluation_state=metadata.evaluation_state,  # type: ignore[arg-type]
        evaluation_note=metadata.evaluation_note,
        label=metadata.label,  # type: ignore[arg-type]
        label_note=metadata.label_note,
        triage_state=metadata.triage_state,  # type: ignore[arg-type]
        labeled_by=metadata.labeled_by,
    )
    message.features.update(json.loads(metadata.features or "{}"))
    for violation in json.loads(metadata.violations or "[]"):
        message.violations.add(
            policy=violation.get("policy", ""),
            version=int(violation.get("version", 0)),
            severity=int(violation.get("severity", 0)),
            title=violation.get("title", ""),
        )
    if metadata.label_time_us is not None:
        message.label_time.CopyFrom(timestamp_from_us(metadata.label_time_us))
    return message


def event_message(
    *,
    record: EventRecord,
    metadata: EventMetadata,
    receipt: ingest_pb2.Receipt,
    personal: PersonalFields | None,
    state: int,
) -> ingest_pb2.Event:
    event = ingest_pb2.Event(
        name=f"events/{record.event_id}",
        event_id=record.event_id,
        type=record.type,
        source=record.source,
        occurred_at=timestamp_from_us(record.occurred_at_us),
        severity=record.severity,  # type: ignore[arg-type]
        subject_pseudonym=record.subject_pseudonym,
        personal_data_state=state,  # type: ignore[arg-type]
        receive_time=timestamp_from_us(record.receive_time_us),
        receipt=receipt,
        metadata=metadata_message(metadata),
    )
    if record.dimensions:
        # Non-personal details, stored in clear: shown even when the personal ones are withheld or erased.
        event.details.update(decode_dimensions(record.dimensions))
    if personal is not None:
        event.subject = personal.subject
        event.summary = personal.summary
        event.details.update(personal.details)
    return event


def scoring_input(
    *,
    event_id: str,
    pseudonym: str,
    event_type: str,
    source: str,
    severity: int,
    occurred_at_us: int,
    summary_length: int,
    detail_count: int,
    history: SubjectHistory,
) -> scoring_pb2.ScoringInput:
    return scoring_pb2.ScoringInput(
        event_id=event_id,
        subject_pseudonym=pseudonym,
        type=event_type,
        source=source,
        severity=severity,  # type: ignore[arg-type]
        occurred_at=timestamp_from_us(occurred_at_us),
        summary_length=summary_length,
        detail_count=detail_count,
        history=scoring_pb2.SubjectHistory(
            events_24h=history.events_24h,
            events_7d=history.events_7d,
            violations_30d=history.violations_30d,
            distinct_sources_24h=history.distinct_sources_24h,
            source_is_new=history.source_is_new,
            failed_logins_24h=history.failed_logins_24h,
            seconds_since_previous_event=history.seconds_since_previous_event,
        ),
    )


def subject_record(
    record: EventRecord, metadata: EventMetadata, leaf_index: int | None
) -> ingest_pb2.SubjectRecord:
    """A stored event as gdpr reads it: sealed, never opened here."""
    return ingest_pb2.SubjectRecord(
        event_id=record.event_id,
        leaf_index=leaf_index,
        type=record.type,
        source=record.source,
        occurred_at=timestamp_from_us(record.occurred_at_us),
        severity=record.severity,  # type: ignore[arg-type]
        key_period=record.key_period,
        nonce=bytes(record.nonce),
        ciphertext=bytes(record.ciphertext),
        metadata=metadata_message(metadata),
        receive_time=timestamp_from_us(record.receive_time_us),
        leaf_hash=bytes(record.leaf_hash),
    )


def training_example(metadata: EventMetadata, history: SubjectHistory) -> ingest_pb2.TrainingExample:
    """A labelled event as scoring trains on it (its scoring input and the label) and was served."""
    example = ingest_pb2.TrainingExample(
        input=scoring_input(
            event_id=metadata.event_id,
            pseudonym=metadata.subject_pseudonym,
            event_type=metadata.type,
            source=metadata.source,
            severity=metadata.severity,
            occurred_at_us=metadata.occurred_at_us,
            summary_length=metadata.summary_length,
            detail_count=metadata.detail_count,
            history=history,
        ),
        label=metadata.label,  # type: ignore[arg-type]
    )
    if metadata.risk_score is not None and metadata.model_version:
        # What was served, so scoring can measure its models on analysts' labels.
        example.served_score = metadata.risk_score
        example.served_model_version = metadata.model_version
    if metadata.label_time_us is not None:
        example.label_time.CopyFrom(timestamp_from_us(metadata.label_time_us))
    return example
