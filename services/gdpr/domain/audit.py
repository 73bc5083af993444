"""Tamper-evident audit trail of gdpr actions (erase, export, consent change, retention, key rotation).

Every entry stores the SHA-256 of the previous entry (``prev_hash``) and its own (``entry_hash``) over a
canonical encoding, so editing, inserting, removing or reordering entries breaks the chain. Entries name
their target by pseudonym (or rule / key id), never by a personal identifier: the trail outlives erasure.
A chain whose newest entries are cut off or rewritten wholesale is only caught against a published head
hash (``verify_chain(..., expected_head=...)``), e.g. one appended to the transparency log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

GENESIS_HASH = bytes(32)
_CANONICAL_VERSION = "awareness.gdpr.audit/v1"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    actor: str
    action: str
    target: str
    at: datetime
    reason: str
    request_id: str
    prev_hash: bytes
    entry_hash: bytes


def _check_fields(*, target: str, at: datetime) -> None:
    # A cheap guard against the most likely leak: an e-mail address used as the target.
    if "@" in target:
        raise ValueError("audit target must be a pseudonym or resource id, never a personal identifier")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit time must be timezone-aware")


def canonical_bytes(
    *, actor: str, action: str, target: str, at: datetime, reason: str, request_id: str, prev_hash: bytes
) -> bytes:
    """The exact bytes an entry hash covers: sorted-key compact JSON, time in UTC to the microsecond."""
    document = {
        "v": _CANONICAL_VERSION,
        "actor": actor,
        "action": action,
        "target": target,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "reason": reason,
        "request_id": request_id,
        "prev_hash": prev_hash.hex(),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compute_entry_hash(entry: AuditEntry) -> bytes:
    """Recompute the SHA-256 an entry should carry from its other fields."""
    return hashlib.sha256(
        canonical_bytes(
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            at=entry.at,
            reason=entry.reason,
            request_id=entry.request_id,
            prev_hash=entry.prev_hash,
        )
    ).digest()


def new_audit_entry(
    *,
    previous: AuditEntry | None,
    actor: str,
    action: str,
    target: str,
    at: datetime,
    reason: str,
    request_id: str,
) -> AuditEntry:
    """The next entry of the chain after ``previous`` (``None`` for the first entry)."""
    _check_fields(target=target, at=at)
    unhashed = AuditEntry(
        actor=actor,
        action=action,
        target=target,
        at=at,
        reason=reason,
        request_id=request_id,
        prev_hash=GENESIS_HASH if previous is None else previous.entry_hash,
        entry_hash=b"",
    )
    return replace(unhashed, entry_hash=compute_entry_hash(unhashed))


def verify_chain(
    entries: Iterable[AuditEntry], *, anchor: bytes = GENESIS_HASH, expected_head: bytes | None = None
) -> int | None:
    """Index of the first bad entry, or ``None`` when the chain is intact.

    An entry is bad when its ``prev_hash`` is not the previous entry's hash (``anchor`` for the first; pass
    the last verified hash to check a later segment) or its ``entry_hash`` does not match its content.
    With ``expected_head``, a consistent chain that does not end at that hash returns ``len(entries)``:
    entries were cut off the end or the tail rewritten.
    """
    expected_prev = anchor
    count = 0
    for index, entry in enumerate(entries):
        if entry.prev_hash != expected_prev or compute_entry_hash(entry) != entry.entry_hash:
            return index
        expected_prev = entry.entry_hash
        count = index + 1
    if expected_head is not None and expected_prev != expected_head:
        return count
    return None
