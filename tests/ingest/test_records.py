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
        "payload": records.system_payload_json(summary="", details={}),
        "dimensions": records.dimensions_json({"campaign_id": "c-1"}),
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


ACCESS_DETAILS = {
    "principal": "key:auditor-1",
    "action": "event.read",
    "method": "/awareness.ingest.v1.IngestService/GetEvent",
    "resource": "events/0197a0b2-7c4e-7a1b-8f00-123456789abc",
    "outcome": "OK",
}


def make_system_record(**changes: object) -> records.StoredRecord:
    """An access record as version 2 stores it: no key, no ciphertext, its payload in clear."""
    record = make_record(
        type="audit.action",
        source="ingest",
        key_period="",
        key_id="",
        nonce=b"",
        ciphertext=b"",
        payload=records.system_payload_json(summary="", details=ACCESS_DETAILS),
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_version_2_bytes_are_version_1_plus_the_payload_as_stored():
    record = make_system_record()
    assert record.version == 2 and make_record().version == 1
    data = records.canonical_record_bytes(record)
    document = json.loads(data)
    assert list(document) == sorted(document)
    assert (document["format"], document["v"]) == ("awareness.ingest.record.v2", 2)
    assert document["payload"] == record.payload  # the stored characters, as a JSON string
    assert json.loads(document["payload"]) == {"summary": "", "details": ACCESS_DETAILS}
    assert document["payload"].encode() == canonical_json({"summary": "", "details": ACCESS_DETAILS})
    # Without its payload member (and as version 1) the document is exactly the version-1 encoding.
    v1 = {**document, "format": "awareness.ingest.record.v1", "v": 1}
    del v1["payload"]
    assert canonical_json(v1) == records.canonical_record_bytes(dataclasses.replace(record, payload=None))


def test_a_version_2_leaf_changes_with_its_payload():
    baseline = records.record_leaf_hash(make_system_record())
    for change in (
        {**ACCESS_DETAILS, "outcome": "PERMISSION_DENIED"},
        {**ACCESS_DETAILS, "principal": "key:someone-else"},
        {**ACCESS_DETAILS, "resource": "events/0197a0b2-7c4e-7a1b-8f00-123456789abd"},
        {key: value for key, value in ACCESS_DETAILS.items() if key != "action"},
    ):
        payload = records.system_payload_json(summary="", details=change)
        assert records.record_leaf_hash(make_system_record(payload=payload)) != baseline, change
    summary = records.system_payload_json(summary="x", details=ACCESS_DETAILS)
    assert records.record_leaf_hash(make_system_record(payload=summary)) != baseline
    # The same record without the payload member (version 1) is another leaf too.
    assert records.record_leaf_hash(make_system_record(payload=None)) != baseline


def test_the_system_payload_is_canonical_whatever_the_order_of_its_details():
    forwards = records.system_payload_json(summary="s", details={"a": "1", "é": "ü", "b": "\n"})
    backwards = records.system_payload_json(summary="s", details={"b": "\n", "é": "ü", "a": "1"})
    assert forwards == backwards == '{"details":{"a":"1","b":"\\n","é":"ü"},"summary":"s"}'
    assert records.decode_system_payload(forwards) == records.SystemPayload(
        summary="s", details={"a": "1", "b": "\n", "é": "ü"}
    )
    # The spelling system payloads had before version 2 (json.dumps, sorted) is not canonical.
    legacy = json.dumps({"summary": "s", "details": {"a": "1", "é": "ü"}}, sort_keys=True)
    for payload in (
        legacy,
        '{"summary":"s","details":{}}',  # members out of order
        '{"details":{},"summary":"s","extra":"x"}',
        '{"details":{"a":1},"summary":"s"}',
        '{"details":[],"summary":"s"}',
        '{"details":{},"summary":"s"',
        '"text"',
        "[" * 100_000,
    ):
        with pytest.raises(ValueError):
            records.decode_system_payload(payload)


def test_version_2_records_decode_back_and_reject_what_is_not_canonical():
    record = make_system_record()
    data = records.canonical_record_bytes(record)
    assert records.decode_canonical_record(data) == record
    assert records.record_leaf_hash(record) == merkle.leaf_hash(data)
    document = json.loads(data)
    spaced = json.dumps({"details": ACCESS_DETAILS, "summary": ""}, sort_keys=True)
    bad_documents = [
        {**document, "payload": spaced},  # the payload spelled otherwise
        {**document, "format": "awareness.ingest.record.v1"},  # version and format disagree
        {**document, "v": 1},
        {**document, "v": 3, "format": "awareness.ingest.record.v3"},
        {key: value for key, value in document.items() if key != "payload"},  # v2 without payload
        {**document, "payload": {"details": ACCESS_DETAILS, "summary": ""}},  # an object, not a string
        {
            **json.loads(records.canonical_record_bytes(make_record())),
            "payload": record.payload,
        },  # v1 + payload
    ]
    for bad in bad_documents:
        with pytest.raises(ValueError):
            records.decode_canonical_record(canonical_json(bad))


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
# Every text member of a record document, each any text.
_record_values = st.fixed_dictionaries(
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
)


@settings(max_examples=300, deadline=None)
@given(
    values=_record_values,
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


_timestamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {
            name: _any_text
            for name in ("event_id", "type", "source", "subject_pseudonym", "key_period", "key_id")
        }
    ),
    occurred_at=_timestamps,
    receive_time=_timestamps,
    severity=st.sampled_from(list(Severity)),
    nonce=st.binary(max_size=12),
    ciphertext=st.binary(max_size=64),
    payload=st.none() | st.tuples(_any_text, _details),
)
def test_records_of_either_version_round_trip_through_their_canonical_bytes(
    values: dict[str, str],
    occurred_at: datetime,
    receive_time: datetime,
    severity: Severity,
    nonce: bytes,
    ciphertext: bytes,
    payload: tuple[str, dict[str, str]] | None,
) -> None:
    stored = None if payload is None else records.system_payload_json(summary=payload[0], details=payload[1])
    record = records.StoredRecord(
        **values,
        occurred_at=occurred_at,
        receive_time=receive_time,
        severity=severity,
        nonce=nonce,
        ciphertext=ciphertext,
        payload=stored,
    )
    data = records.canonical_record_bytes(record)
    decoded = records.decode_canonical_record(data)
    assert decoded == record
    assert records.canonical_record_bytes(decoded) == data
    assert json.loads(data)["v"] == record.version == (1 if payload is None else 2)
    if payload is not None:
        assert records.decode_system_payload(json.loads(data)["payload"]) == records.SystemPayload(
            summary=payload[0], details=payload[1]
        )


@settings(max_examples=300, deadline=None)
@given(
    values=_record_values,
    summary=_any_text,
    details=_details,
)
def test_version_2_bytes_are_the_canonical_json_of_the_record_document(
    values: dict[str, str], summary: str, details: dict[str, str]
) -> None:
    payload = records.system_payload_json(summary=summary, details=details)
    assert payload.encode() == canonical_json({"summary": summary, "details": details})
    document = {
        **values,
        "ciphertext": "",
        "nonce": "",
        "payload": payload,
        "format": records.RECORD_FORMAT_V2,
        "v": 2,
    }
    assert records.record_bytes(**values, nonce=b"", ciphertext=b"", payload=payload) == canonical_json(
        document
    )


DIMENSIONS = {"campaign_id": "c-7", "template": "invoice"}


def test_version_3_bytes_are_version_1_plus_the_dimensions_as_stored():
    stored = records.dimensions_json(DIMENSIONS)
    assert stored == '{"campaign_id":"c-7","template":"invoice"}'
    assert records.dimensions_json({}) is None  # no dimensions: the record stays version 1
    record = make_record(dimensions=stored)
    assert record.version == 3
    data = records.canonical_record_bytes(record)
    document = json.loads(data)
    assert list(document) == sorted(document)
    assert (document["format"], document["v"], document["dimensions"]) == (
        "awareness.ingest.record.v3",
        3,
        stored,
    )
    v1 = {**document, "format": "awareness.ingest.record.v1", "v": 1}
    del v1["dimensions"]
    assert canonical_json(v1) == records.canonical_record_bytes(dataclasses.replace(record, dimensions=None))
    assert records.decode_canonical_record(data) == record


def test_a_version_3_leaf_covers_every_dimension():
    record = make_record(dimensions=records.dimensions_json(DIMENSIONS))
    baseline = records.record_leaf_hash(record)
    for change in ({**DIMENSIONS, "template": "parcel"}, {"campaign_id": "c-7"}, {**DIMENSIONS, "x": ""}):
        changed = dataclasses.replace(record, dimensions=records.dimensions_json(change))
        assert records.record_leaf_hash(changed) != baseline
    assert records.record_leaf_hash(dataclasses.replace(record, dimensions=None)) != baseline


def test_version_3_records_reject_what_is_not_canonical():
    document = json.loads(
        records.canonical_record_bytes(make_record(dimensions=records.dimensions_json(DIMENSIONS)))
    )
    for bad in (
        {**document, "dimensions": json.dumps(DIMENSIONS)},  # spelled otherwise
        {**document, "dimensions": '{"template":"invoice","campaign_id":"c-7"}'},  # out of order
        {**document, "dimensions": "{}"},
        {**document, "dimensions": '{"a":1}'},
        {**document, "dimensions": DIMENSIONS},  # an object, not a string
        {**document, "v": 1, "format": "awareness.ingest.record.v1"},
        {key: value for key, value in document.items() if key != "dimensions"},
        {**document, "payload": records.system_payload_json(summary="", details={})},
    ):
        with pytest.raises(ValueError):
            records.decode_canonical_record(canonical_json(bad))
    for text in ("", "[]", '{"a":"1"', "null"):
        with pytest.raises(ValueError):
            records.decode_dimensions(text)
