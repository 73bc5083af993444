"""The envelope of personal data in a stored record: AES-256-GCM under the subject's data key.

Personal fields (subject identifier, summary, details) are sealed under the subject's per-period
data key (held by gdpr); so are analysts' label notes. Destroying the key (erasure) makes both
unreadable, while the ciphertext, and every hash over it, stays.

The sealed plaintext is the canonical JSON {"details": {...}, "subject": ..., "summary": ..., "v": 1}
and the AES-GCM associated data is the canonical JSON
{"event_id": ..., "format": "awareness.ingest.personal.v1", "key_id": ...}, which binds a ciphertext
to its record and key: it cannot be moved to another record. A sealed note is stored as text:
"sealed1:" + base64(nonce || ciphertext), associated data
{"event_id": ..., "format": "awareness.ingest.label-note.v1", "key_id": ...}.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.evidence.canonical import canonical_json, details_json, json_string
from services.evidence.errors import TamperedRecordError

# The format names are part of the stored bytes (associated data): they never change.
PERSONAL_FORMAT = "awareness.ingest.personal.v1"
NOTE_FORMAT = "awareness.ingest.label-note.v1"
SEALED_NOTE_PREFIX = "sealed1:"
DATA_KEY_BYTES = 32
NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class PersonalFields:
    subject: str
    summary: str
    details: dict[str, str]


@dataclass(frozen=True, slots=True)
class SealedPersonal:
    nonce: bytes
    ciphertext: bytes


def personal_plaintext(
    *, subject: str, summary: str, details: Mapping[str, str], encoded_details: str | None = None
) -> bytes:
    """canonical_json({"details": ..., "subject": ..., "summary": ..., "v": 1}).

    `encoded_details`, when given, is details_json(details), already spelled by the caller.
    """
    encoded = details_json(details) if encoded_details is None else encoded_details
    return (
        f'{{"details":{encoded},"subject":{json_string(subject)},"summary":{json_string(summary)},"v":1}}'
    ).encode()


def _personal_aad(*, event_id: str, key_id: str) -> bytes:
    """canonical_json({"event_id": ..., "format": PERSONAL_FORMAT, "key_id": ...})."""
    return (
        f'{{"event_id":{json_string(event_id)},"format":"{PERSONAL_FORMAT}","key_id":{json_string(key_id)}}}'
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
