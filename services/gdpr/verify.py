"""``awareness gdpr verify-audit``: recompute the gdpr audit trail's hash chain from its database.

Reads ``audit_records`` directly (not through the service, which could lie), oldest first in batches,
and checks for every record that its ``prev_hash`` is the previous record's ``entry_hash`` (the genesis
hash for the first) and that its ``entry_hash`` is the SHA-256 of its canonical encoding
(``services.gdpr.domain.audit``). The first record that breaks the chain is named with what differs.

Sequence numbers may have gaps (a rolled-back transaction consumes one on PostgreSQL): the hash chain,
not the numbering, is what proves that nothing was removed. Records cut off the end of the chain are only
caught against a head hash published earlier (``published_head``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from services.gdpr import repository as repo
from services.gdpr.domain.audit import GENESIS_HASH, AuditEntry, compute_entry_hash

PROGRESS_EVERY = 10_000


@dataclass
class AuditReport:
    """What a verification found: how many records verified, the head they reach, the first break."""

    checked: int = 0
    head_hash: bytes = GENESIS_HASH
    head_sequence: int | None = None
    published_head_sequence: int | None = None
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def print(self, out: TextIO) -> None:
        intact = " (intact before the break)" if self.failure is not None else ""
        where = "genesis: empty chain" if self.head_sequence is None else f"sequence {self.head_sequence}"
        print(f"records checked: {self.checked}{intact}", file=out)
        print(f"head hash:       {self.head_hash.hex()} ({where})", file=out)
        if self.published_head_sequence is not None:
            print(f"published head:  found at sequence {self.published_head_sequence}", file=out)
        print("OK" if self.failure is None else f"FAIL  {self.failure}", file=out)


def _describe(sequence: int, entry: AuditEntry) -> str:
    # Action and time only: targets are pseudonyms, but a report is better kept free of them anyway.
    return f"record sequence {sequence} ({entry.action} at {entry.at.isoformat()})"


def verify_audit_database(
    engine: Engine,
    *,
    published_head: bytes | None = None,
    progress: TextIO | None = sys.stderr,
    batch_size: int = PROGRESS_EVERY,
) -> AuditReport:
    """Recompute the whole chain; stop at the first record that breaks it.

    ``progress`` gets a line per ``batch_size`` records when the trail is longer than one batch.
    With ``published_head``, the chain must pass through a record with that ``entry_hash``.
    """
    report = AuditReport()
    with Session(engine) as session:
        total = repo.audit_count(session)
        expected_prev = GENESIS_HASH
        previous_sequence: int | None = None
        while True:
            batch = repo.audit_chain_batch(session, after_sequence=previous_sequence, limit=batch_size)
            if not batch:
                break
            for position, (sequence, entry) in enumerate(batch):
                if entry.prev_hash != expected_prev:
                    before = (
                        "the genesis hash (it is the first record: records before it were removed?)"
                        if previous_sequence is None
                        else f"the entry_hash of the record before it (sequence {previous_sequence})"
                    )
                    report.failure = (
                        f"{_describe(sequence, entry)}: its prev_hash {entry.prev_hash.hex()} is not "
                        f"{expected_prev.hex()}, {before}: a record was removed, inserted or reordered "
                        "here, or a stored hash was changed"
                    )
                    return report
                recomputed = compute_entry_hash(entry)
                if recomputed != entry.entry_hash:
                    # The record after it tells whether the fields or the stored hash were changed.
                    following = batch[position + 1 : position + 2] or repo.audit_chain_batch(
                        session, after_sequence=sequence, limit=1
                    )
                    report.failure = f"{_describe(sequence, entry)}: " + _content_mismatch(
                        stored=entry.entry_hash,
                        recomputed=recomputed,
                        following=following[0][1] if following else None,
                    )
                    return report
                expected_prev = entry.entry_hash
                previous_sequence = sequence
                report.checked += 1
                report.head_hash, report.head_sequence = entry.entry_hash, sequence
                if published_head is not None and entry.entry_hash == published_head:
                    report.published_head_sequence = sequence
            if progress is not None and total > batch_size:
                print(f"verify-audit: {report.checked}/{total} records checked", file=progress, flush=True)
    if published_head is not None and report.published_head_sequence is None:
        report.failure = (
            f"the published head {published_head.hex()} is not in the chain: records were cut off the end, "
            "or the chain was rewritten from some record on"
        )
    return report


def _content_mismatch(*, stored: bytes, recomputed: bytes, following: AuditEntry | None) -> str:
    """What differs when a record's fields do not hash to its entry_hash."""
    hashes = f"stored entry_hash {stored.hex()}, recomputed {recomputed.hex()}"
    if following is not None and following.prev_hash == recomputed:
        return (
            f"its stored entry_hash was changed ({hashes}; the next record still links to the recomputed one)"
        )
    if following is not None and following.prev_hash == stored:
        return (
            "its fields (actor, action, target, at, reason, request_id) were changed after it was written "
            f"({hashes})"
        )
    return f"its fields or its entry_hash were changed after it was written ({hashes})"
