"""After a restore: bring the log back to every leaf any checkpoint covers, and prove it is the same log.

The restored database holds the log as it was at the backup. The archive (services.ingest.archive)
holds every leaf that a checkpoint covered before the disaster. Recovery:

1. re-imports each archived leaf beyond the restored tree, with its original insert order (``seq``),
   after checking that the record re-hashes to its leaf hash. Records that the backup caught before
   they were integrated are already there, under the same ``seq``;
2. integrates in ``seq`` order, as the integrator did, so every leaf gets its old index back;
3. stores the archived checkpoints, and checks that the rebuilt tree has the root of every
   checkpoint it reaches: those in the database, in the archive, and those held outside (a
   witness's or an auditor's);
4. proves consistency from the newest checkpoint held to the new head (RFC 6962).

A checkpoint held outside that is larger than what could be rebuilt means leaves are missing that
somebody holds a signature over: recovery says which, and the log must not go on (appending would
fork it). Events acknowledged but never checkpointed are not in any archive; ``unrecovered`` tells
which of the event ids a producer presents (its receipts) are not back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import repository
from services.ingest.archive import ArchivedLeaf, LogArchive
from services.ingest.domain.merkle import consistency_proof, root_hash, verify_consistency
from services.ingest.domain.records import record_leaf_hash
from services.ingest.integrator import integrate_rows
from services.ingest.models import EventRecord
from services.ingest.repository import ACCESS, METADATA, RECORDS, DatabaseNodeStore, stored_record
from services.runtime.db import transaction

_BATCH = 1_000
_ANALYTICS_PENDING = 1


class RecoveryError(Exception):
    """The archive or the restored log cannot be reconciled; nothing after the failing step ran."""


@dataclass(frozen=True, slots=True)
class HeldCheckpoint:
    """A checkpoint somebody outside holds, already verified against the log's keys."""

    tree_size: int
    root_hash: bytes
    source: str


@dataclass(slots=True)
class LogRecovery:
    restored_tree_size: int = 0
    archived_size: int = 0
    reimported: int = 0
    already_present: int = 0
    tree_size: int = 0
    checkpoints_checked: int = 0
    newest_checkpoint: int = 0
    missing_leaves: tuple[int, int] | None = None  # [start, end) a held checkpoint covers
    consistency: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def reconciled(self) -> bool:
        return not self.problems


def recover_log(
    sessions: sessionmaker[Session], archive: LogArchive, *, held: Sequence[HeldCheckpoint] = ()
) -> LogRecovery:
    result = LogRecovery()
    with sessions() as session:
        result.restored_tree_size = repository.tree_state(session).tree_size
    segments = archive.segments()
    result.archived_size = segments[-1].end if segments else 0
    checkpoints: list[dict[str, Any]] = []
    for segment in segments:
        if segment.end <= result.restored_tree_size:
            continue
        ending, leaves = archive.read_segment(segment)
        batch: list[ArchivedLeaf] = []
        for leaf in leaves:
            if leaf.leaf_index < result.restored_tree_size:
                continue
            batch.append(leaf)
            if len(batch) == _BATCH:
                _reimport(sessions, batch, result)
                batch = []
        if batch:
            _reimport(sessions, batch, result)
        if ending is not None:
            checkpoints.append(ending)
    with transaction(sessions) as session:
        if repository.is_postgres(session):
            # Records came back with their own seq: the sequence must hand out numbers above them.
            session.execute(
                text(
                    "SELECT setval(pg_get_serial_sequence('event_records', 'seq'), max(seq))"
                    " FROM event_records"
                )
            )
    _integrate_all(sessions)
    with transaction(sessions) as session:
        for values in checkpoints:
            repository.insert_checkpoint(session, values=values)
    _check_roots(sessions, held, result)
    return result


def _reimport(sessions: sessionmaker[Session], leaves: list[ArchivedLeaf], result: LogRecovery) -> None:
    for leaf in leaves:
        recomputed = record_leaf_hash(stored_record(EventRecord(**leaf.record)))
        if recomputed != leaf.record["leaf_hash"]:
            raise RecoveryError(
                f"archived leaf {leaf.leaf_index} (event {leaf.record['event_id']}) does not re-hash to its "
                "leaf hash: the archive was changed; nothing was re-imported from this leaf on"
            )
    with transaction(sessions) as session:
        rows = session.execute(
            select(RECORDS.c.event_id, RECORDS.c.seq).where(
                RECORDS.c.event_id.in_([leaf.record["event_id"] for leaf in leaves])
            )
        ).all()
        present = {row.event_id: row.seq for row in rows}
        fresh = []
        for leaf in leaves:
            seq = present.get(leaf.record["event_id"])
            if seq is None:
                fresh.append(leaf)
            elif seq != leaf.record["seq"]:
                raise RecoveryError(
                    f"event {leaf.record['event_id']} is in the restored log under another insert order "
                    f"({seq}, the archive says {leaf.record['seq']}): the backup is not of this log"
                )
        if fresh:
            session.execute(insert(RECORDS), [leaf.record for leaf in fresh])
            metadata = [
                {**leaf.metadata, "analytics_state": _ANALYTICS_PENDING}
                for leaf in fresh
                if leaf.metadata is not None
            ]
            if metadata:
                session.execute(insert(METADATA), metadata)
            access = [row for leaf in fresh for row in leaf.access]
            if access:
                session.execute(insert(ACCESS), access)
    result.reimported += len(fresh)
    result.already_present += len(leaves) - len(fresh)


def _integrate_all(sessions: sessionmaker[Session]) -> None:
    """Integrate every stored record in seq order, as the integrator would."""
    while True:
        with transaction(sessions) as session:
            state = repository.tree_state(session)
            top = int(session.execute(select(func.coalesce(func.max(RECORDS.c.seq), 0))).scalar_one())
            rows = repository.unintegrated_records(
                session, after_seq=state.last_seq, up_to_seq=top, limit=20_000
            )
            if not rows:
                return
            integrate_rows(session, state=state, rows=rows)


def _check_roots(
    sessions: sessionmaker[Session], held: Sequence[HeldCheckpoint], result: LogRecovery
) -> None:
    with sessions() as session:
        store = DatabaseNodeStore(session)
        tree_size = repository.tree_state(session).tree_size
        result.tree_size = tree_size
        # The checkpoints the archive brought back, and the newest the backup held: the older ones
        # came with the backup's tree and are `awareness verify`'s to check, not a restore's.
        checkpoints = repository.CHECKPOINTS
        newest_restored = (
            select(func.coalesce(func.max(checkpoints.c.tree_size), 0))
            .where(checkpoints.c.tree_size <= result.restored_tree_size)
            .scalar_subquery()
        )
        stored = [
            HeldCheckpoint(tree_size=row.tree_size, root_hash=bytes(row.root_hash), source="the log's own")
            for row in session.execute(
                select(checkpoints.c.tree_size, checkpoints.c.root_hash).where(
                    checkpoints.c.tree_size >= newest_restored
                )
            ).all()
        ]
        for checkpoint in [*stored, *held]:
            if checkpoint.tree_size > tree_size:
                result.missing_leaves = (
                    tree_size,
                    max(checkpoint.tree_size, (result.missing_leaves or (0, 0))[1]),
                )
                result.problems.append(
                    f"{checkpoint.source} checkpoint of size {checkpoint.tree_size} covers leaves "
                    f"{tree_size}..{checkpoint.tree_size - 1}, which neither the backup nor the archive holds"
                )
                continue
            result.checkpoints_checked += 1
            if root_hash(checkpoint.tree_size, store) != checkpoint.root_hash:
                result.problems.append(
                    f"{checkpoint.source} checkpoint of size {checkpoint.tree_size} has another root than "
                    "the rebuilt log: the log would fork"
                )
        if result.problems:
            return
        pre_disaster = max([*stored, *held], key=lambda checkpoint: checkpoint.tree_size, default=None)
        if pre_disaster is None:
            return
        result.newest_checkpoint = pre_disaster.tree_size
        proof = consistency_proof(old_size=pre_disaster.tree_size, new_size=tree_size, store=store)
        head = root_hash(tree_size, store)
        if not verify_consistency(
            old_size=pre_disaster.tree_size,
            new_size=tree_size,
            old_root=pre_disaster.root_hash,
            new_root=head,
            proof=proof,
        ):
            result.problems.append(
                "the consistency proof from the newest checkpoint to the head does not verify"
            )
            return
        result.consistency = {
            "old_size": pre_disaster.tree_size,
            "old_root": pre_disaster.root_hash.hex(),
            "old_source": pre_disaster.source,
            "new_size": tree_size,
            "new_root": head.hex(),
            "proof": [node.hex() for node in proof],
        }


def unrecovered(sessions: sessionmaker[Session], event_ids: Iterable[str]) -> list[str]:
    """Of the acknowledged event ids a producer presents, those the log does not hold."""
    wanted = list(dict.fromkeys(event_ids))
    found: set[str] = set()
    with sessions() as session:
        for begin in range(0, len(wanted), _BATCH):
            chunk = wanted[begin : begin + _BATCH]
            found.update(session.scalars(select(RECORDS.c.event_id).where(RECORDS.c.event_id.in_(chunk))))
    return [event_id for event_id in wanted if event_id not in found]


def access_resources(sessions: sessionmaker[Session], *, action: str) -> list[str]:
    """The resources of every access record of ``action`` that succeeded, oldest first."""
    with sessions() as session:
        rows = session.execute(
            select(ACCESS.c.resource)
            .where(ACCESS.c.action == action, ACCESS.c.outcome == "OK", ACCESS.c.ordinal == 0)
            .order_by(ACCESS.c.time_us)
        ).all()
    return list(dict.fromkeys(row.resource for row in rows))
