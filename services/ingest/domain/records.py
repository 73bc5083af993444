"""The stored record: sealed personal fields, canonical bytes for the Merkle leaf, fingerprints.

Personal fields (subject identifier, summary, details) are sealed with AES-256-GCM under the
subject's per-period data key (held by gdpr). The Merkle leaf covers the canonical bytes of the
record *including the ciphertext*, so destroying the key (erasure) leaves every hash verifiable.

Canonical record encoding, version 1 ("awareness.ingest.record.v1"): one JSON object, UTF-8, no
insignificant whitespace, members sorted by name, strings escaped as RFC 8785 (JCS) does; for the
value types used (strings and the integer version) this is exactly JCS output. Members:

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

The sealed plaintext is the canonical JSON {"details": {...}, "subject": ..., "summary": ..., "v": 1}
and the AES-GCM associated data is the canonical JSON
{"event_id": ..., "format": "awareness.ingest.personal.v1", "key_id": ...}, which binds a ciphertext
to its record and key: it cannot be moved to another record.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.ingest.domain.errors import TamperedRecordError
from services.ingest.domain.events import EventInput, Severity, parse_severity
from services.ingest.domain.merkle import leaf_hash

RECORD_FORMAT = "awareness.ingest.record.v1"
PERSONAL_FORMAT = "awareness.ingest.personal.v1"
FINGERPRINT_FORMAT = "awareness.ingest.fingerprint.v1"
FINGERPRINT_KEY_FORMAT = b"awareness.ingest.fingerprint-key.v1\x00"
NOTE_FORMAT = "awareness.ingest.label-note.v1"
SEALED_NOTE_PREFIX = "sealed1:"
DATA_KEY_BYTES = 32
NONCE_BYTES = 12
MIN_FINGERPRINT_SECRET_BYTES = 16


@dataclass(frozen=True, slots=True)
class PersonalFields:
    subject: str
    summary: str
    details: dict[str, str]


@dataclass(frozen=True, slots=True)
class SealedPersonal:
    nonce: bytes
    ciphertext: bytes


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


# One encoder for every canonical document: json.dumps with options builds a new one per call.
_JCS_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True)
_JCS_UNSORTED_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def canonical_json(value: Mapping[str, Any]) -> bytes:
    """RFC 8785-compatible JSON for objects of strings, small integers and nested such objects."""
    if _code_point_order_is_jcs(value):
        # The common case, done in C: code-point order equals JCS's UTF-16 order for these keys.
        return _JCS_ENCODER.encode(value).encode("utf-8")
    return _JCS_UNSORTED_ENCODER.encode(_sorted_for_jcs(value)).encode("utf-8")


def _code_point_order_is_jcs(value: Any) -> bool:
    """True when every object is a dict whose keys are strings without a character at or above
    U+D800 (where code-point and UTF-16 orders can differ): then json's own sort_keys is JCS order."""
    pending = [value]
    while pending:
        current = pending.pop()
        if type(current) is not dict:
            return False
        try:
            joined = "".join(current)
        except TypeError:  # a non-string key
            return False
        if joined and max(joined) >= "\ud800":
            return False
        for member in current.values():
            if type(member) is not str and isinstance(member, Mapping):
                pending.append(member)
    return True


# The documents of the append path have fixed shapes, so they are spelled directly: each string goes
# through the same C escaper the JSON encoder uses, with members already in JCS order. The result
# equals canonical_json of the same document (a property test checks it) at a fraction of the cost.
_json_string: Callable[[str], str] = json.encoder.encode_basestring


def details_json(details: Mapping[str, str]) -> str:
    """The canonical JSON object of a details map (the append path spells it once per event, for
    both the fingerprint and the sealed plaintext)."""
    if not details:
        return "{}"
    names = "".join(details)
    if names and max(names) >= "\ud800":  # UTF-16 order may differ from code-point order
        return canonical_json(dict(details)).decode("utf-8")
    return "{" + ",".join(f"{_json_string(k)}:{_json_string(details[k])}" for k in sorted(details)) + "}"


def personal_plaintext(
    *, subject: str, summary: str, details: Mapping[str, str], encoded_details: str | None = None
) -> bytes:
    """canonical_json({"details": ..., "subject": ..., "summary": ..., "v": 1}).

    `encoded_details`, when given, is details_json(details), already spelled by the caller.
    """
    encoded = details_json(details) if encoded_details is None else encoded_details
    return (
        f'{{"details":{encoded},"subject":{_json_string(subject)},"summary":{_json_string(summary)},"v":1}}'
    ).encode()


def _sorted_for_jcs(value: Any) -> Any:
    # JCS orders members by their UTF-16 code units, which differs from code-point order only
    # for keys mixing astral characters with U+E000..U+FFFF; details keys may be anything.
    if isinstance(value, Mapping):
        return {
            key: _sorted_for_jcs(value[key])
            for key in sorted(value, key=lambda k: str(k).encode("utf-16-be"))
        }
    return value


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


def _personal_aad(*, event_id: str, key_id: str) -> bytes:
    """canonical_json({"event_id": ..., "format": PERSONAL_FORMAT, "key_id": ...})."""
    return (
        f'{{"event_id":{_json_string(event_id)},"format":"{PERSONAL_FORMAT}","key_id":{_json_string(key_id)}}}'
    ).encode()


def seal_personal(
    *,
    key: bytes,
    key_id: str,
    event_id: str,
    subject: str,
    summary: str,
    details: Mapping[str, str],
    cipher: AESGCM | None = None,
    encoded_details: str | None = None,
    nonce: bytes | None = None,
) -> SealedPersonal:
    """Encrypt the personal fields with AES-256-GCM under a fresh random 96-bit nonce.

    `cipher`, when given, is ``AESGCM(key)`` made once by the caller for many events of one key;
    `encoded_details` is details_json(details); `nonce`, 12 bytes from os.urandom that the caller
    drew for many events at once (never reused: each event gets its own slice).
    """
    if len(key) != DATA_KEY_BYTES:
        raise ValueError(f"data keys are {DATA_KEY_BYTES} bytes (AES-256), got {len(key)}")
    plaintext = personal_plaintext(
        subject=subject, summary=summary, details=details, encoded_details=encoded_details
    )
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    elif len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonces are {NONCE_BYTES} bytes, got {len(nonce)}")
    ciphertext = (cipher or AESGCM(key)).encrypt(
        nonce, plaintext, _personal_aad(event_id=event_id, key_id=key_id)
    )
    return SealedPersonal(nonce=nonce, ciphertext=ciphertext)


def open_personal(*, key: bytes, key_id: str, event_id: str, sealed: SealedPersonal) -> PersonalFields:
    """Decrypt and authenticate; TamperedRecordError if anything (or the key) does not match."""
    if len(key) != DATA_KEY_BYTES:
        raise ValueError(f"data keys are {DATA_KEY_BYTES} bytes (AES-256), got {len(key)}")
    try:
        plaintext = AESGCM(key).decrypt(
            sealed.nonce, sealed.ciphertext, _personal_aad(event_id=event_id, key_id=key_id)
        )
    except (InvalidTag, ValueError) as error:
        raise TamperedRecordError(f"personal fields of event {event_id} failed authentication") from error
    try:
        document = json.loads(plaintext)
        fields = PersonalFields(
            subject=document["subject"], summary=document["summary"], details=dict(document["details"])
        )
    except (ValueError, KeyError, TypeError) as error:
        raise TamperedRecordError(f"personal fields of event {event_id} are malformed") from error
    if document.get("v") != 1 or not _all_strings(fields):
        raise TamperedRecordError(f"personal fields of event {event_id} have an unknown layout")
    return fields


def _note_aad(*, event_id: str, key_id: str) -> bytes:
    return canonical_json({"event_id": event_id, "format": NOTE_FORMAT, "key_id": key_id})


def seal_note(*, key: bytes, key_id: str, event_id: str, note: str) -> str:
    """An analyst's label note sealed under the event's data key, as stored (text column).

    Notes are personal data: sealed like the event's personal fields, bound to the event and key,
    so erasing the subject's key makes them unreadable. The empty note stays empty.
    """
    if not note:
        return ""
    if len(key) != DATA_KEY_BYTES:
        raise ValueError(f"data keys are {DATA_KEY_BYTES} bytes (AES-256), got {len(key)}")
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, note.encode("utf-8"), _note_aad(event_id=event_id, key_id=key_id))
    return SEALED_NOTE_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")


def is_sealed_note(stored: str) -> bool:
    return stored.startswith(SEALED_NOTE_PREFIX)


def open_note(*, key: bytes, key_id: str, event_id: str, stored: str) -> str:
    """Inverse of seal_note; TamperedRecordError if the note or the key does not match."""
    if not stored:
        return ""
    try:
        data = base64.b64decode(stored.removeprefix(SEALED_NOTE_PREFIX), validate=True)
        plaintext = AESGCM(key).decrypt(
            data[:NONCE_BYTES], data[NONCE_BYTES:], _note_aad(event_id=event_id, key_id=key_id)
        )
        return plaintext.decode("utf-8")
    except (InvalidTag, ValueError, binascii.Error) as error:
        raise TamperedRecordError(f"the label note of event {event_id} failed authentication") from error


def _all_strings(fields: PersonalFields) -> bool:
    return (
        isinstance(fields.subject, str)
        and isinstance(fields.summary, str)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in fields.details.items())
    )


def canonical_record_bytes(record: StoredRecord) -> bytes:
    """The version-1 canonical encoding described in this module's docstring (the Merkle leaf data)."""
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
) -> bytes:
    """canonical_record_bytes from the values; times already in format_timestamp form."""
    j = _json_string
    return (
        f'{{"ciphertext":"{base64.b64encode(ciphertext).decode("ascii")}","event_id":{j(event_id)},'
        f'"format":"{RECORD_FORMAT}","key_id":{j(key_id)},"key_period":{j(key_period)},'
        f'"nonce":"{base64.b64encode(nonce).decode("ascii")}","occurred_at":{j(occurred_at)},'
        f'"receive_time":{j(receive_time)},"severity":{j(severity)},"source":{j(source)},'
        f'"subject_pseudonym":{j(subject_pseudonym)},"type":{j(type)},"v":1}}'
    ).encode()


def record_leaf_hash(record: StoredRecord) -> bytes:
    """RFC 6962 leaf hash of the record's canonical bytes."""
    return leaf_hash(canonical_record_bytes(record))


def decode_canonical_record(data: bytes) -> StoredRecord:
    """Parse canonical record bytes (e.g. from an export) and insist they re-encode identically."""
    try:
        document = json.loads(data.decode("utf-8"))
        if (
            not isinstance(document, dict)
            or document.get("format") != RECORD_FORMAT
            or document.get("v") != 1
        ):
            raise ValueError("not an awareness.ingest.record.v1 document")
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
        )
    except (UnicodeDecodeError, KeyError, TypeError, AttributeError, binascii.Error) as error:
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
    j = _json_string
    encoded = details_json(details) if encoded_details is None else encoded_details
    content = (
        f'{{"details":{encoded},"format":"{FINGERPRINT_FORMAT}",'
        f'"occurred_at":{j(occurred_at)},"severity":{j(severity)},"source":{j(source)},'
        f'"subject":{j(subject)},"summary":{j(summary)},"type":{j(type)}}}'
    ).encode()
    return hmac.digest(secret, content, "sha256").hex()
