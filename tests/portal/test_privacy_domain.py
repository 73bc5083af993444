"""The data protection pages' pure logic: forms, consent state, counts and the audit chain check."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from awareness.gdpr.v1 import gdpr_pb2
from awareness.ingest.v1 import ingest_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from services.gdpr.domain.audit import AuditEntry, new_audit_entry
from services.portal.domain import privacy
from services.runtime.errors import InvalidArgumentError

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
GRANT = gdpr_pb2.ConsentRecord.ACTION_GRANT
WITHDRAW = gdpr_pb2.ConsentRecord.ACTION_WITHDRAW


def stamp(at: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(at)
    return value


def consent(purpose: str, action: int, minutes: int) -> gdpr_pb2.ConsentRecord:
    return gdpr_pb2.ConsentRecord(
        pseudonym="psn_a",
        purpose=purpose,
        action=action,  # type: ignore[arg-type]
        time=stamp(START + timedelta(minutes=minutes)),
        actor="apikey:dpo",
    )


def states(records: list[gdpr_pb2.ConsentRecord]) -> dict[str, bool]:
    return {state.purpose: state.granted for state in privacy.consent_states(records)}


# --- consent ------------------------------------------------------------------------------------


def test_without_records_each_purpose_has_its_default() -> None:
    found = privacy.consent_states([])
    assert {state.purpose: state.granted for state in found} == {
        "profiling": True,
        "analytics": True,
        "training_data": False,
    }
    assert all(state.by_default and state.latest is None for state in found)


def test_the_latest_record_decides_whatever_order_the_list_has() -> None:
    newest_first = [consent("profiling", GRANT, 5), consent("profiling", WITHDRAW, 1)]
    assert states(newest_first)["profiling"] is True
    assert states(list(reversed(newest_first)))["profiling"] is True
    withdrawn = [consent("profiling", WITHDRAW, 9), consent("profiling", GRANT, 1)]
    profiling = next(s for s in privacy.consent_states(withdrawn) if s.purpose == "profiling")
    assert profiling.granted is False
    assert not profiling.by_default
    assert profiling.latest is not None and privacy.consent_action_word(profiling.latest) == "withdrawn"


def test_equal_times_the_record_listed_first_is_the_later_one() -> None:
    # ListConsentHistory lists newest first: with equal times, the first listed was recorded last.
    assert states([consent("training_data", GRANT, 3), consent("training_data", WITHDRAW, 3)]) == {
        "profiling": True,
        "analytics": True,
        "training_data": True,
    }


def test_a_purpose_the_portal_does_not_know_is_left_out() -> None:
    assert states([consent("marketing", WITHDRAW, 1)])["profiling"] is True


def test_a_consent_form_offers_only_known_purposes_and_actions() -> None:
    request_id = str(uuid.uuid4())
    change = privacy.consent_change(
        {"purpose": ["analytics"], "action": ["withdraw"], "reason": [" DPO-7 "], "request_id": [request_id]}
    )
    assert change == privacy.ConsentChange("analytics", "withdraw", "DPO-7", request_id)
    with pytest.raises(InvalidArgumentError) as refused:
        privacy.consent_change({"purpose": ["marketing"], "action": ["revoke"]})
    assert {violation.field for violation in refused.value.violations} == {"purpose", "action"}


def test_a_form_without_a_valid_request_id_gets_a_new_one() -> None:
    made = privacy.request_id_of({"request_id": ["not-a-uuid"]})
    assert made != "not-a-uuid"
    assert str(uuid.UUID(made)) == made
    assert privacy.request_id_of({}) != privacy.request_id_of({})


# --- identifiers, erasure and export ----------------------------------------------------------


def test_an_identifier_is_required_and_bounded() -> None:
    assert privacy.identifier_of({"subject": ["  ada@example.org "]}) == "ada@example.org"
    for form in ({}, {"subject": ["   "]}, {"subject": ["a" * 400]}):
        with pytest.raises(InvalidArgumentError):
            privacy.identifier_of(form)


def test_an_erasure_needs_a_reason_and_the_pseudonym_typed() -> None:
    assert privacy.erasure_violations(reason="DPO-123", typed=" psn_abc ", pseudonym="psn_abc") == []
    fields = {
        v.field: v.description
        for v in privacy.erasure_violations(reason=" ", typed="ERASE", pseudonym="psn_abc")
    }
    assert set(fields) == {"reason", "confirmation"}
    assert "nothing was erased" in fields["confirmation"]
    # Another person's pseudonym is no confirmation for this one.
    assert [
        v.field for v in privacy.erasure_violations(reason="x", typed="psn_abd", pseudonym="psn_abc")
    ] == ["confirmation"]
    assert [v.field for v in privacy.erasure_violations(reason="x", typed="", pseudonym="psn_abc")] == [
        "confirmation"
    ]


def test_the_export_file_is_named_by_pseudonym_and_nothing_else() -> None:
    assert privacy.export_filename("psn_abc123") == "export-psn_abc123.json"
    assert privacy.export_filename('a"b/../c') == "export-a_b____c.json"


def test_a_reason_can_be_required() -> None:
    assert privacy.reason_of({}, required=False, what="x") == ""
    with pytest.raises(InvalidArgumentError):
        privacy.reason_of({"reason": [" "]}, required=True, what="x")
    with pytest.raises(InvalidArgumentError):
        privacy.reason_of({"reason": ["r" * 501]}, required=False, what="x")


def test_the_erasure_a_log_event_names() -> None:
    event = ingest_pb2.Event(type="gdpr.erasure", details={"erasure": "erasures/e-1"})
    assert privacy.erasure_named_by(event) == "erasures/e-1"
    assert (
        privacy.erasure_named_by(
            ingest_pb2.Event(type="phishing.clicked", details={"erasure": "erasures/e-1"})
        )
        == ""
    )
    assert (
        privacy.erasure_named_by(ingest_pb2.Event(type="gdpr.erasure", details={"erasure": "keys/x"})) == ""
    )
    assert (
        privacy.erasure_named_by(ingest_pb2.Event(type="gdpr.erasure", details={"erasure": "erasures/a/b"}))
        == ""
    )


def test_names_fit_for_an_address() -> None:
    assert privacy.is_pseudonym("psn_abc234")
    assert not privacy.is_pseudonym("ada@example.org")
    assert not privacy.is_pseudonym("")
    assert privacy.is_erasure_id("0b7c-11")
    assert not privacy.is_erasure_id("../x")


# --- counting -----------------------------------------------------------------------------------


def test_events_are_counted_by_type_and_say_when_counting_stopped() -> None:
    events = [ingest_pb2.Event(type=kind) for kind in ("b", "a", "b", "c", "b", "a")]
    count = privacy.count_events(events, capped=False)
    assert (count.total, count.text) == (6, "6")
    assert count.by_type == [("b", 3), ("a", 2), ("c", 1)]
    capped = privacy.count_events([ingest_pb2.Event(type="x")] * 1000, capped=True)
    assert capped.text == "1,000+"


# --- retention ----------------------------------------------------------------------------------


def test_a_retention_rule_form() -> None:
    assert privacy.rule_change({"event_type": [""], "retention_days": ["0"]}) == privacy.RuleChange("", 0, "")
    assert privacy.rule_change(
        {"event_type": ["phishing.clicked"], "retention_days": ["365"], "reason": ["policy"]}
    ) == privacy.RuleChange("phishing.clicked", 365, "policy")
    for days in ("-1", "", "1.5", "36501", "ten"):
        with pytest.raises(InvalidArgumentError) as refused:
            privacy.rule_change({"retention_days": [days]})
        assert [v.field for v in refused.value.violations] == ["retention_days"]


# --- the audit chain ----------------------------------------------------------------------------


def chain(length: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    for number in range(length):
        entries.append(
            new_audit_entry(
                previous=entries[-1] if entries else None,
                actor="apikey:dpo",
                action="subject.export",
                target=f"psn_{number}",
                at=START + timedelta(seconds=number, microseconds=123),
                reason=f"ticket {number}",
                request_id="",
            )
        )
    return entries


def as_records(entries: list[AuditEntry], *, first_sequence: int = 1) -> list[gdpr_pb2.AuditRecord]:
    """Newest first, as ListAuditRecords lists them."""
    records = [
        gdpr_pb2.AuditRecord(
            actor=entry.actor,
            action=entry.action,
            time=stamp(entry.at),
            target=entry.target,
            reason=entry.reason,
            request_id=entry.request_id,
            sequence=first_sequence + index,
            prev_hash=entry.prev_hash,
            entry_hash=entry.entry_hash,
        )
        for index, entry in enumerate(entries)
    ]
    return list(reversed(records))


def test_an_untouched_chain_is_intact_back_to_genesis() -> None:
    entries = chain(5)
    check = privacy.check_chain(as_records(entries), from_genesis=True)
    assert check.intact and check.first_break is None
    assert [row.record.sequence for row in check.rows] == [5, 4, 3, 2, 1]
    assert all(row.hash_matches and row.links for row in check.rows)
    assert (check.head_sequence, check.head_hash) == (5, entries[-1].entry_hash.hex())


def test_a_changed_record_breaks_the_chain_there() -> None:
    records = as_records(chain(5))
    records[2].reason = "nothing to see"  # sequence 3
    check = privacy.check_chain(records, from_genesis=True)
    assert not check.intact
    assert check.first_break == 3
    by_sequence = {row.record.sequence: row for row in check.rows}
    assert not by_sequence[3].hash_matches
    assert by_sequence[4].links  # the next record still names the stored hash


def test_a_removed_record_breaks_the_link_of_the_next() -> None:
    records = as_records(chain(5))
    del records[2]  # sequence 3
    check = privacy.check_chain(records, from_genesis=True)
    assert check.first_break == 4
    assert {row.record.sequence: row.links for row in check.rows}[4] is False


def test_a_page_of_newer_records_links_to_one_not_fetched() -> None:
    newest = chain(8)[5:]
    check = privacy.check_chain(as_records(newest, first_sequence=6), from_genesis=False)
    assert check.intact
    assert check.rows[-1].links is None
    # Had the list reached the start of the trail, that first record would have to link to genesis.
    assert privacy.check_chain(as_records(newest, first_sequence=6), from_genesis=True).first_break == 6


def test_gaps_in_the_sequence_are_not_a_break() -> None:
    records = as_records(chain(3))
    records[0].sequence = 9  # a rolled-back transaction consumed numbers
    assert privacy.check_chain(records, from_genesis=True).intact


def test_an_empty_trail() -> None:
    check = privacy.check_chain([], from_genesis=True)
    assert check.intact and check.rows == [] and check.head_sequence is None
