"""The envelope of personal data (shared by ingest, which seals, and gdpr, which opens for export)."""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.evidence import envelope
from services.evidence.canonical import canonical_json
from services.evidence.errors import EvidenceError, TamperedRecordError

KEY = bytes(range(32))

_any_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=24)
_details = st.dictionaries(_any_text, _any_text, max_size=6)


def sealed_for(event_id: str, *, key: bytes = KEY, key_id: str = "dk-2025-06-1") -> envelope.SealedPersonal:
    return envelope.seal_personal(
        key=key,
        key_id=key_id,
        event_id=event_id,
        subject="alice@example.com",
        summary="Clicked «invoice» link",
        details={"url": "https://example.test/x", "campaign": "q2"},
    )


def test_seal_and_open_roundtrip():
    event_id = str(uuid.uuid4())
    sealed = sealed_for(event_id)
    assert len(sealed.nonce) == 12
    assert b"alice" not in sealed.ciphertext
    opened = envelope.open_personal(key=KEY, key_id="dk-2025-06-1", event_id=event_id, sealed=sealed)
    assert opened == envelope.PersonalFields(
        subject="alice@example.com",
        summary="Clicked «invoice» link",
        details={"url": "https://example.test/x", "campaign": "q2"},
    )


def test_each_seal_uses_a_fresh_nonce():
    event_id = str(uuid.uuid4())
    assert sealed_for(event_id).nonce != sealed_for(event_id).nonce


def test_ciphertext_cannot_move_to_another_record_or_key_id():
    sealed = sealed_for("0197a0b2-7c4e-7a1b-8f00-000000000001")
    with pytest.raises(TamperedRecordError):
        envelope.open_personal(
            key=KEY, key_id="dk-2025-06-1", event_id="0197a0b2-7c4e-7a1b-8f00-000000000002", sealed=sealed
        )
    with pytest.raises(TamperedRecordError):
        envelope.open_personal(
            key=KEY, key_id="dk-2025-07-1", event_id="0197a0b2-7c4e-7a1b-8f00-000000000001", sealed=sealed
        )


@pytest.mark.parametrize("part", ["nonce", "ciphertext"])
def test_tampering_or_wrong_key_is_detected(part):
    event_id = str(uuid.uuid4())
    sealed = sealed_for(event_id)
    altered = bytearray(getattr(sealed, part))
    altered[len(altered) // 2] ^= 0x01
    tampered = dataclasses.replace(sealed, **{part: bytes(altered)})
    with pytest.raises(TamperedRecordError) as raised:
        envelope.open_personal(key=KEY, key_id="dk-2025-06-1", event_id=event_id, sealed=tampered)
    assert raised.value.grpc_code_name == "DATA_LOSS"
    with pytest.raises(TamperedRecordError):
        envelope.open_personal(key=os.urandom(32), key_id="dk-2025-06-1", event_id=event_id, sealed=sealed)


def test_keys_must_be_aes256():
    with pytest.raises(ValueError, match="32 bytes"):
        sealed_for(str(uuid.uuid4()), key=b"k" * 16)


def test_details_key_order_does_not_change_the_plaintext():
    event_id = str(uuid.uuid4())
    forward = envelope.seal_personal(
        key=KEY, key_id="k", event_id=event_id, subject="s", summary="", details={"a": "1", "b": "2"}
    )
    backward = envelope.seal_personal(
        key=KEY, key_id="k", event_id=event_id, subject="s", summary="", details={"b": "2", "a": "1"}
    )
    # Same plaintext bytes: decrypt both and compare the canonical encodings.
    assert envelope.open_personal(
        key=KEY, key_id="k", event_id=event_id, sealed=forward
    ) == envelope.open_personal(key=KEY, key_id="k", event_id=event_id, sealed=backward)
    assert canonical_json({"b": "2", "a": "1"}) == b'{"a":"1","b":"2"}'


@settings(max_examples=300, deadline=None)
@given(subject=_any_text, summary=_any_text, details=_details)
def test_personal_plaintext_is_the_canonical_json_of_its_document(
    subject: str, summary: str, details: dict[str, str]
) -> None:
    expected = canonical_json({"details": details, "subject": subject, "summary": summary, "v": 1})
    assert envelope.personal_plaintext(subject=subject, summary=summary, details=details) == expected


def test_details_keys_whose_utf16_order_differs_are_sorted_as_jcs_requires() -> None:
    # U+1F600 sorts after U+FB01 by code point but before it by UTF-16 code units (0xD83D < 0xFB01).
    details = {"\ufb01": "bmp", "\U0001f600": "astral"}
    plaintext = envelope.personal_plaintext(subject="s", summary="", details=details)
    assert plaintext.index("\U0001f600".encode()) < plaintext.index("\ufb01".encode())


def test_tampered_record_error_is_data_loss_under_the_one_root() -> None:
    assert issubclass(TamperedRecordError, EvidenceError)
    assert TamperedRecordError.grpc_code_name == "DATA_LOSS"
    assert TamperedRecordError.reason == "RECORD_TAMPERED"


def test_a_sealed_note_opens_only_for_its_event_and_key() -> None:
    event_id = str(uuid.uuid4())
    stored = envelope.seal_note(key=KEY, key_id="k1", event_id=event_id, note="called back: «phish»")
    assert envelope.is_sealed_note(stored) and "phish" not in stored
    opened = envelope.open_note(key=KEY, key_id="k1", event_id=event_id, stored=stored)
    assert opened == "called back: «phish»"
    wrong = [(KEY, "k2", event_id), (KEY, "k1", str(uuid.uuid4())), (os.urandom(32), "k1", event_id)]
    for key, key_id, other_event in wrong:
        with pytest.raises(TamperedRecordError):
            envelope.open_note(key=key, key_id=key_id, event_id=other_event, stored=stored)
    assert envelope.seal_note(key=KEY, key_id="k1", event_id=event_id, note="") == ""
