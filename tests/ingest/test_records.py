from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.evidence.canonical import canonical_json
from services.ingest.domain import merkle, records
from services.ingest.domain.events import EventInput, Severity, new_event_id
from tests.evidence.test_envelope import sealed_for
from tests.ingest.harness import event_input

SECRET = b"server-fingerprint-secret-0123456789"


def make_record(**changes: object) -> records.StoredRecord:
    event_id = "0197a0b2-7c4e-7a1b-8f00-123456789abc"
    sealed = sealed_for(event_id)
    record = records.StoredRecord(
        event_id=event_id,
        type="phishing.clicked",
        source="gophish",
        occurred_at=datetime(2025, 6, 1, 12, 0, 0, 5, tzinfo=UTC),
        severity=Severity.HIGH,
        subject_pseudonym="ps_3f9a",
        key_period="2025-06",
        key_id="dk-2025-06-1",
        receive_time=datetime(2025, 6, 1, 12, 0, 1, tzinfo=UTC),
        nonce=sealed.nonce,
        ciphertext=sealed.ciphertext,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_canonical_bytes_are_documented_sorted_json_with_ciphertext():
    record = make_record()
    data = records.canonical_record_bytes(record)
    document = json.loads(data)
    assert list(document) == sorted(document)
    assert document["format"] == "awareness.ingest.record.v1"
    assert document["occurred_at"] == "2025-06-01T12:00:00.000005Z"
    assert document["receive_time"] == "2025-06-01T12:00:01.000000Z"
    assert document["severity"] == "high"
    assert base64.b64decode(document["ciphertext"]) == record.ciphertext
    assert b" " not in data.replace(b'"gophish"', b"")  # no insignificant whitespace
    assert b"alice" not in data


def test_canonical_bytes_are_stable_across_processes():
    record = make_record()
    script = (
        "import dataclasses, sys\n"
        "from datetime import datetime, timezone, timedelta\n"
        "from services.ingest.domain import records\n"
        "from services.ingest.domain.events import Severity\n"
        f"record = records.StoredRecord(event_id={record.event_id!r}, type='phishing.clicked',"
        " source='gophish',"
        " occurred_at=datetime(2025, 6, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2))),"
        " severity=Severity.HIGH, subject_pseudonym='ps_3f9a', key_period='2025-06', key_id='dk-2025-06-1',"
        " receive_time=datetime(2025, 6, 1, 12, 0, 1, tzinfo=timezone.utc),"
        f" nonce={record.nonce!r}, ciphertext={record.ciphertext!r})\n"
        "sys.stdout.buffer.write(records.canonical_record_bytes(record))\n"
    )
    # A fresh interpreter with a different hash seed must produce the same bytes.
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.stdout == records.canonical_record_bytes(record)


def test_canonical_bytes_change_with_every_field():
    baseline = records.canonical_record_bytes(make_record())
    changes = {
        "event_id": "0197a0b2-7c4e-7a1b-8f00-123456789abd",
        "type": "phishing.reported",
        "source": "mailgw",
        "occurred_at": datetime(2025, 6, 1, 12, 0, 0, 6, tzinfo=UTC),
        "severity": Severity.LOW,
        "subject_pseudonym": "ps_other",
        "key_period": "2025-07",
        "key_id": "dk-2025-06-2",
        "receive_time": datetime(2025, 6, 1, 12, 0, 2, tzinfo=UTC),
        "nonce": b"\x00" * 12,
        "ciphertext": b"\x01" * 40,
    }
    assert set(changes) == {f.name for f in dataclasses.fields(records.StoredRecord)}
    for name, value in changes.items():
        assert records.canonical_record_bytes(make_record(**{name: value})) != baseline, name


def test_canonical_record_decodes_back_and_rejects_non_canonical_bytes():
    record = make_record()
    data = records.canonical_record_bytes(record)
    assert records.decode_canonical_record(data) == record
    assert records.record_leaf_hash(record) == merkle.leaf_hash(data)
    reordered = json.dumps(json.loads(data), sort_keys=False, indent=1).encode()
    with pytest.raises(ValueError, match="canonical"):
        records.decode_canonical_record(reordered)
    with pytest.raises(ValueError):
        records.decode_canonical_record(data.replace(b".000005Z", b".5Z", 1))


def fingerprint_event(**changes: object) -> EventInput:
    """The event the fingerprint tests vary: no event id (the fingerprint ignores it), two details."""
    fixed: dict[str, object] = {
        "event_id": None,
        "occurred_at": datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
        "summary": "clicked",
        "details": {"a": "1", "b": "2"},
    }
    return event_input(**{**fixed, **changes})


def test_fingerprint_ignores_spelling_but_not_content():
    base = records.content_fingerprint(fingerprint_event(), secret=SECRET)
    same_content = fingerprint_event(
        details={"b": "2", "a": "1"},
        severity=Severity.HIGH.value,
        occurred_at=datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
        event_id=new_event_id(),
    )
    assert records.content_fingerprint(same_content, secret=SECRET) == base
    changes: list[dict[str, object]] = [
        {"type": "phishing.reported"},
        {"source": "other"},
        {"subject": "bob@example.com"},
        {"occurred_at": datetime(2025, 6, 1, 12, 0, 0, 1, tzinfo=UTC)},
        {"severity": "low"},
        {"summary": "clicked twice"},
        {"details": {"a": "1", "b": "3"}},
        {"details": {"a": "1"}},
    ]
    for change in changes:
        assert records.content_fingerprint(fingerprint_event(**change), secret=SECRET) != base, change


def test_fingerprint_is_keyed():
    event = fingerprint_event()
    assert records.content_fingerprint(event, secret=SECRET) != records.content_fingerprint(
        event, secret=SECRET + b"!"
    )
    with pytest.raises(ValueError):
        records.content_fingerprint(event, secret=b"short")
    with pytest.raises(ValueError):
        records.content_fingerprint(fingerprint_event(occurred_at=None), secret=SECRET)


_any_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=24)
_details = st.dictionaries(_any_text, _any_text, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {
            name: _any_text
            for name in (
                "event_id",
                "type",
                "source",
                "occurred_at",
                "severity",
                "subject_pseudonym",
                "key_period",
                "key_id",
                "receive_time",
            )
        }
    ),
    nonce=st.binary(max_size=12),
    ciphertext=st.binary(max_size=64),
)
def test_record_bytes_are_the_canonical_json_of_the_record_document(
    values: dict[str, str], nonce: bytes, ciphertext: bytes
) -> None:
    document = {
        **values,
        "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
        "nonce": base64.b64encode(nonce).decode("ascii"),
        "format": records.RECORD_FORMAT,
        "v": 1,
    }
    assert records.record_bytes(**values, nonce=nonce, ciphertext=ciphertext) == canonical_json(document)


@settings(max_examples=300, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {name: _any_text for name in ("type", "source", "subject", "occurred_at", "severity", "summary")}
    ),
    details=_details,
)
def test_fingerprint_is_the_hmac_of_the_canonical_content(
    values: dict[str, str], details: dict[str, str]
) -> None:
    content = canonical_json({**values, "details": details, "format": records.FINGERPRINT_FORMAT})
    expected = hmac.new(SECRET, content, hashlib.sha256).hexdigest()
    assert records.fingerprint_fields(secret=SECRET, details=details, **values) == expected
