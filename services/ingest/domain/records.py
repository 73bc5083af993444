"""The stored record: canonical bytes for the Merkle leaf, fingerprints.

Personal fields are sealed by ``services.evidence.envelope`` (shared with gdpr, which opens them for
an export). The Merkle leaf covers the canonical bytes of the record *including the ciphertext*, so
destroying the key (erasure) leaves every hash verifiable.

Canonical record encoding, version 1 ("awareness.ingest.record.v1"): the canonical JSON of
``services.evidence.canonical`` (for the value types used, strings and the integer version,
exactly RFC 8785 output). Members:

    ciphertext        base64 (RFC 4648, standard alphabet, padded) of the AES-GCM ciphertext+tag
    event_id          lower-case 8-4-4-4-12 UUID
    format            "awareness.ingest.record.v1"
    key_id            id of the data key used to seal the personal fields
    key_period        the key's period, e.g. "2025-06"
    nonce             base64 of the 12-byte AES-GCM nonce
    occurred_at       RFC 3339 UTC, always 6 fractional digits and "Z": 2025-06-01T12:00:00.000000Z
    receive_time      same format as occurred_at
    severity          "info" | "low" | "medium" | "high" | "critical"
    source            the emitting system
    subject_pseudonym the subject's pseudonym (never the identifier)
    type              registered event type
    v                 1

Version 2 ("awareness.ingest.record.v2"), the encoding of system events (types registered with
``system=True``: erasure and access records) appended since it was introduced: the same canonical
JSON, with "format" "awareness.ingest.record.v2", "v" 2 and one more member,

    payload           the event's system payload exactly as stored (``event_records.system_payload``):
                      a JSON string whose value is the canonical JSON (as above) of
                      {"details": {name: value, ...}, "summary": "..."}

so the leaf covers who did what, on which resource, with which outcome, not only that a record
about a pseudonym existed. System events carry no personal data, hence no key and no ciphertext:
their ciphertext, nonce, key_id and key_period are empty. Client events stay version 1 (their
personal fields are in the ciphertext). A record's version is in ``event_records.record_version``;
records stored as version 1 keep their version-1 leaf, and system events stored as version 1 (before
version 2) are covered without their payload.

Version 3 ("awareness.ingest.record.v3"), the encoding of client events that carry dimensions (detail
keys declared non-personal by services.ingest.domain.minimisation): version 1's members, with
"format" "awareness.ingest.record.v3", "v" 3 and one more member,

    dimensions        the event's dimensions exactly as stored (``event_records.dimensions``): a JSON
                      string whose value is the canonical JSON of {name: value, ...}

so the values that analytics counts in clear are covered by the leaf like the sealed fields. A
client event without dimensions stays version 1. Decoders accept every version and insist the
bytes, and a version-2 payload or version-3 dimensions, re-encode identically.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.evidence.canonical import details_json, json_string
from services.ingest.domain.events import EventInput, Severity, parse_severity
from services.ingest.domain.merkle import leaf_hash

RECORD_FORMAT = "awareness.ingest.record.v1"
RECORD_FORMAT_V2 = "awareness.ingest.record.v2"
RECORD_FORMAT_V3 = "awareness.ingest.record.v3"
RECORD_VERSIONS = (1, 2, 3)
FINGERPRINT_FORMAT = "awareness.ingest.fingerprint.v1"
FINGERPRINT_KEY_FORMAT = b"awareness.ingest.fingerprint-key.v1\x00"
MIN_FINGERPRINT_SECRET_BYTES = 16


def record_format(version: int) -> str:
    """The "format" member of a record of that encoding version."""
    return {1: RECORD_FORMAT, 2: RECORD_FORMAT_V2, 3: RECORD_FORMAT_V3}[version]


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """What the log stores for one event: non-personal fields plus the sealed personal ones."""

    event_id: str
    type: str
    source: str
    occurred_at: datetime
    severity: Severity
    subject_pseudonym: str
    key_period: str
    key_id: str
    receive_time: datetime
    nonce: bytes
    ciphertext: bytes
    # Version 2 (system events appended since it exists): the stored system payload the leaf covers;
    # None for a version-1 record.
    payload: str | None = None
    # Version 3 (client events with dimensions): the stored dimensions the leaf covers, else None.
    dimensions: str | None = None

    @property
    def version(self) -> int:
        """The record encoding version: 2 when the leaf covers a payload, 3 dimensions, else 1."""
        if self.payload is not None:
            return 2
        return 1 if self.dimensions is None else 3


@dataclass(frozen=True, slots=True)
class SystemPayload:
    """A system event's non-personal summary and details, as its stored payload spells them."""

    summary: str
    details: Mapping[str, str]


def system_payload_json(
    *, summary: str, details: Mapping[str, str], encoded_details: str | None = None
) -> str:
    """The stored payload of a system event: canonical JSON of {"details": ..., "summary": ...}.

    One spelling per content (members sorted, no insignificant whitespace, RFC 8785 escapes), so a
    version-2 leaf, which covers these exact characters, can be rebuilt and checked by anyone.
    `encoded_details`, when given, is details_json(details), already spelled by the caller.
    """
    encoded = details_json(details) if encoded_details is None else encoded_details
    return f'{{"details":{encoded},"summary":{json_string(summary)}}}'


def decode_system_payload(payload: str) -> SystemPayload:
    """Parse a version-2 payload and insist it is the canonical spelling of summary and details."""
    try:
        document = json.loads(payload)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"the payload is not JSON: {error!r}") from error
    if not isinstance(document, dict) or set(document) != {"details", "summary"}:
        raise ValueError("the payload must be an object of exactly summary and details")
    summary, details = document["summary"], document["details"]
    if (
        not isinstance(summary, str)
        or not isinstance(details, dict)
        or not all(isinstance(value, str) for value in details.values())
    ):
        raise ValueError("the payload's summary and detail values must be strings")
    if system_payload_json(summary=summary, details=details) != payload:
        raise ValueError("the payload is not in canonical form")
    return SystemPayload(summary=summary, details=details)


def dimensions_json(dimensions: Mapping[str, str]) -> str | None:
    """The stored spelling of a client event's dimensions (canonical JSON); None when it has none,
    so that the record stays version 1."""
    return details_json(dimensions) if dimensions else None


def decode_dimensions(text: str) -> dict[str, str]:
    """Parse stored dimensions and insist they are the canonical spelling of a string map."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"the dimensions are not JSON: {error!r}") from error
    if not isinstance(document, dict) or not document:
        raise ValueError("the dimensions must be a non-empty object")
    if not all(isinstance(value, str) for value in document.values()):
        raise ValueError("dimension values must be strings")
    if details_json(document) != text:
        raise ValueError("the dimensions are not in canonical form")
    return document


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with exactly six fractional digits and "Z"."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("timestamps must carry a time zone")
    # isoformat pads the year to four digits and, with this timespec, always prints microseconds.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


_NAIVE_EPOCH = datetime(1970, 1, 1)


# format_timestamp_us spells the whole seconds once: events of a stream cluster around the present,
# so most share their second with an earlier one. Bounded; cleared when full.
_SECOND_TEXT: dict[int, str] = {}
_SECOND_TEXT_LIMIT = 65_536


def format_timestamp_us(micros: int) -> str:
    """format_timestamp of a time given as microseconds since the Unix epoch."""
    seconds, fraction = divmod(micros, 1_000_000)
    text = _SECOND_TEXT.get(seconds)
    if text is None:
        if len(_SECOND_TEXT) >= _SECOND_TEXT_LIMIT:
            _SECOND_TEXT.clear()
        text = _SECOND_TEXT[seconds] = (_NAIVE_EPOCH + timedelta(seconds=seconds)).isoformat()
    return f"{text}.{fraction:06d}Z"


def parse_timestamp(text: str) -> datetime:
    """Inverse of format_timestamp; rejects any other spelling so the encoding stays canonical."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    if format_timestamp(moment) != text:
        raise ValueError(f"timestamp {text!r} is not in canonical form")
    return moment


def canonical_record_bytes(record: StoredRecord) -> bytes:
    """The canonical encoding described in this module's docstring (the Merkle leaf data): version 2
    when the record has a payload, else version 1."""
    return record_bytes(
        event_id=record.event_id,
        type=record.type,
        source=record.source,
        occurred_at=format_timestamp(record.occurred_at),
        severity=record.severity.label,
        subject_pseudonym=record.subject_pseudonym,
        key_period=record.key_period,
        key_id=record.key_id,
        receive_time=format_timestamp(record.receive_time),
        nonce=record.nonce,
        ciphertext=record.ciphertext,
        payload=record.payload,
        dimensions=record.dimensions,
    )


def record_bytes(
    *,
    event_id: str,
    type: str,
    source: str,
    occurred_at: str,
    severity: str,
    subject_pseudonym: str,
    key_period: str,
    key_id: str,
    receive_time: str,
    nonce: bytes,
    ciphertext: bytes,
    payload: str | None = None,
    dimensions: str | None = None,
) -> bytes:
    """canonical_record_bytes from the values; times already in format_timestamp form.

    Version 1 without payload and dimensions; with a payload (a system event's): version 2; with
    dimensions (a client event's, as stored): version 3.
    """
    j = json_string
    first = ""
    if payload is not None:
        name, middle, version = RECORD_FORMAT_V2, f'"payload":{j(payload)},', 2
    elif dimensions is not None:
        name, middle, version = RECORD_FORMAT_V3, "", 3
        first = f'"dimensions":{j(dimensions)},'
    else:
        name, middle, version = RECORD_FORMAT, "", 1
    return (
        f'{{"ciphertext":"{base64.b64encode(ciphertext).decode("ascii")}",{first}"event_id":{j(event_id)},'
        f'"format":"{name}","key_id":{j(key_id)},"key_period":{j(key_period)},'
        f'"nonce":"{base64.b64encode(nonce).decode("ascii")}","occurred_at":{j(occurred_at)},{middle}'
        f'"receive_time":{j(receive_time)},"severity":{j(severity)},"source":{j(source)},'
        f'"subject_pseudonym":{j(subject_pseudonym)},"type":{j(type)},"v":{version}}}'
    ).encode()


def record_leaf_hash(record: StoredRecord) -> bytes:
    """RFC 6962 leaf hash of the record's canonical bytes."""
    return leaf_hash(canonical_record_bytes(record))


def decode_canonical_record(data: bytes) -> StoredRecord:
    """Parse canonical record bytes of either version (e.g. an inclusion proof's leaf data) and
    insist they re-encode identically; a version-2 payload must be canonical too."""
    try:
        document = json.loads(data.decode("utf-8"))
        if not isinstance(document, dict):
            raise ValueError("not an awareness.ingest.record document")
        version = document.get("v")
        payload = dimensions = None
        if version == 1 and document.get("format") == RECORD_FORMAT:
            pass
        elif version == 2 and document.get("format") == RECORD_FORMAT_V2:
            payload = document["payload"]
            if not isinstance(payload, str):
                raise ValueError("the payload member must be a string")
            decode_system_payload(payload)
        elif version == 3 and document.get("format") == RECORD_FORMAT_V3:
            dimensions = document["dimensions"]
            if not isinstance(dimensions, str):
                raise ValueError("the dimensions member must be a string")
            decode_dimensions(dimensions)
        else:
            raise ValueError("not an awareness.ingest.record.v1, .v2 or .v3 document")
        severity = parse_severity(document["severity"])
        if severity is None:
            raise ValueError(f"unknown severity {document['severity']!r}")
        record = StoredRecord(
            event_id=document["event_id"],
            type=document["type"],
            source=document["source"],
            occurred_at=parse_timestamp(document["occurred_at"]),
            severity=severity,
            subject_pseudonym=document["subject_pseudonym"],
            key_period=document["key_period"],
            key_id=document["key_id"],
            receive_time=parse_timestamp(document["receive_time"]),
            nonce=base64.b64decode(document["nonce"], validate=True),
            ciphertext=base64.b64decode(document["ciphertext"], validate=True),
            payload=payload,
            dimensions=dimensions,
        )
    except (UnicodeDecodeError, KeyError, TypeError, AttributeError, RecursionError, binascii.Error) as error:
        raise ValueError(f"malformed canonical record: {error}") from error
    if canonical_record_bytes(record) != data:
        raise ValueError("record bytes are not in canonical form")
    return record


def content_fingerprint(event: EventInput, *, secret: bytes, data_key: bytes | None = None) -> str:
    """HMAC-SHA256 (hex) over the canonical content of a submitted, already validated event.

    Used for idempotency: a retried event_id with the same fingerprint gets the original receipt,
    with a different one EVENT_ID_CONFLICT. The content holds personal data, hence a keyed HMAC,
    never a bare hash that could be confirmed by guessing: client events are keyed with
    subject_fingerprint_key(secret, data_key), so the fingerprint dies with the subject's key;
    system events (no personal data, no key) with the server secret alone.
    """
    severity = parse_severity(event.severity)
    if event.occurred_at is None or severity is None:
        raise ValueError("fingerprints are taken of validated events (occurred_at and severity set)")
    if data_key is not None:  # client events: keyed with the subject's data key (system ones have none)
        secret = subject_fingerprint_key(secret=secret, data_key=data_key)
    return fingerprint_fields(
        secret=secret,
        type=event.type,
        source=event.source,
        subject=event.subject,
        occurred_at=format_timestamp(event.occurred_at),
        severity=severity.label,
        summary=event.summary,
        details=event.details,
    )


def subject_fingerprint_key(*, secret: bytes, data_key: bytes) -> bytes:
    """The fingerprint key of one subject data key: HMAC(secret, format || data key).

    Shredded with the data key: once a subject is erased nobody, not even a holder of the server
    secret and the database, can confirm a guess of the erased content from a stored fingerprint,
    and a re-append under the same event id gets a new key, so right and wrong guesses both conflict.
    """
    if len(secret) < MIN_FINGERPRINT_SECRET_BYTES:
        raise ValueError(f"the fingerprint secret must be at least {MIN_FINGERPRINT_SECRET_BYTES} bytes")
    return hmac.digest(secret, FINGERPRINT_KEY_FORMAT + data_key, "sha256")


def fingerprint_fields(
    *,
    secret: bytes,
    type: str,
    source: str,
    subject: str,
    occurred_at: str,
    severity: str,
    summary: str,
    details: Mapping[str, str],
    encoded_details: str | None = None,
) -> str:
    """content_fingerprint from the validated values; occurred_at in format_timestamp form.

    `encoded_details`, when given, is details_json(details), already spelled by the caller.
    """
    if len(secret) < MIN_FINGERPRINT_SECRET_BYTES:
        raise ValueError(f"the fingerprint secret must be at least {MIN_FINGERPRINT_SECRET_BYTES} bytes")
    j = json_string
    encoded = details_json(details) if encoded_details is None else encoded_details
    content = (
        f'{{"details":{encoded},"format":"{FINGERPRINT_FORMAT}",'
        f'"occurred_at":{j(occurred_at)},"severity":{j(severity)},"source":{j(source)},'
        f'"subject":{j(subject)},"summary":{j(summary)},"type":{j(type)}}}'
    ).encode()
    return hmac.digest(secret, content, "sha256").hex()
