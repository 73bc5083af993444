from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from services.gdpr.domain.audit import (
    GENESIS_HASH,
    AuditEntry,
    compute_entry_hash,
    new_audit_entry,
    verify_chain,
)

T0 = datetime(2026, 11, 5, 9, tzinfo=UTC)


def _chain(length: int = 10) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    previous = None
    for index in range(length):
        previous = new_audit_entry(
            previous=previous,
            actor=f"dpo-{index % 2}",
            action=("erase", "export", "consent.withdraw")[index % 3],
            target=f"psn_{index:04d}",
            at=T0 + timedelta(minutes=index),
            reason=f"ticket {index}",
            request_id=f"req-{index}",
        )
        entries.append(previous)
    return entries


def test_intact_chain_verifies() -> None:
    entries = _chain()
    assert entries[0].prev_hash == GENESIS_HASH
    assert all(entries[i].prev_hash == entries[i - 1].entry_hash for i in range(1, len(entries)))
    assert verify_chain(entries) is None
    assert verify_chain(entries, expected_head=entries[-1].entry_hash) is None
    assert verify_chain([]) is None


@pytest.mark.parametrize("field", ["actor", "action", "target", "reason", "request_id"])
def test_modified_entry_is_found_at_its_index(field: str) -> None:
    entries = _chain()
    changes: dict[str, Any] = {field: "forged"}
    entries[4] = dataclasses.replace(entries[4], **changes)
    assert verify_chain(entries) == 4


def test_modified_time_is_found() -> None:
    entries = _chain()
    entries[6] = dataclasses.replace(entries[6], at=entries[6].at + timedelta(seconds=1))
    assert verify_chain(entries) == 6


def test_same_instant_in_another_zone_is_not_a_modification() -> None:
    entries = _chain()
    entries[2] = dataclasses.replace(entries[2], at=entries[2].at.astimezone(timezone(timedelta(hours=2))))
    assert verify_chain(entries) is None


def test_modified_entry_with_recomputed_hash_breaks_the_next_link() -> None:
    entries = _chain()
    forged = dataclasses.replace(entries[3], reason="nothing to see")
    entries[3] = dataclasses.replace(forged, entry_hash=compute_entry_hash(forged))
    assert verify_chain(entries) == 4


def test_removed_and_reordered_entries_are_found() -> None:
    entries = _chain()
    assert verify_chain(entries[:5] + entries[6:]) == 5
    swapped = list(entries)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    assert verify_chain(swapped) == 2


def test_truncation_is_found_only_against_a_published_head() -> None:
    entries = _chain()
    head = entries[-1].entry_hash
    assert verify_chain(entries[:7]) is None
    assert verify_chain(entries[:7], expected_head=head) == 7


def test_a_later_segment_verifies_from_an_anchor() -> None:
    entries = _chain()
    assert verify_chain(entries[5:], anchor=entries[4].entry_hash) is None
    assert verify_chain(entries[5:]) == 0


@pytest.mark.parametrize(
    ("target", "at"),
    [("alice@example.com", T0), ("psn_a", datetime(2026, 1, 1))],
    ids=["email-target", "naive-time"],
)
def test_target_must_not_be_an_email_and_time_must_be_aware(target: str, at: datetime) -> None:
    with pytest.raises(ValueError):
        new_audit_entry(
            previous=None, actor="dpo", action="erase", target=target, at=at, reason="", request_id="r"
        )
