"""``awareness verify``: check the log without trusting the service.

Offline: a receipt and its inclusion proof (JSON exactly as the API returns them) are checked leaf
data -> leaf hash -> RFC 6962 audit path -> root -> checkpoint signature (Ed25519, C2SP signed
note) -> RFC 3161 time-stamp token over the note (``openssl ts -verify``, when a CA is given).
The leaf data is decoded (record version 1, 2 or 3, services/ingest/domain/records.py): for a
version-2 record, a system event's, the report says the payload is covered and lists its summary and
details (an access record's principal, action, resource and outcome); for a version-3 record, a
client event with dimensions, it lists the dimensions (the non-personal details in clear).

Database: every stored record is re-encoded in its record_version (version 2 with the stored
system payload, version 3 with the stored dimensions) and re-hashed, leaves are checked gap-free, every
stored Merkle node and every checkpoint root is recomputed; the first record that differs is
named (event id and leaf index).

Incremental (``verify_incremental``): from a checkpoint verified before (its tree size and root,
remembered outside the database) to the newest stored checkpoint. The remembered checkpoint must still
be stored with the same root; the frontier of the old tree (its O(log n) perfect subtree hashes) is read
from the stored nodes and must fold to the remembered root, which authenticates it; then only the new
leaves are re-hashed from their records, and the stored nodes and the root of every new checkpoint are
recomputed on top of that frontier; an RFC 6962 consistency proof from the remembered checkpoint to
the newest, built by the same code the API serves proofs with, must verify. What it cannot catch: a
record of an already-verified leaf changed afterwards (an UPDATE of its ciphertext or source), or a
stored node inside the old tree that no new proof reads, because it does not read them again. A full
run catches those, so the scheduled job (``awareness verification run``, services/verification.py) runs
a full one when the last full pass is older than a week, and incremental ones in between. Neither
catches a whole database rolled back to an earlier, self-consistent state: only a party holding a
later checkpoint can (``awareness witness``).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Engine, func, select, tuple_
from sqlalchemy.orm import Session

from services.evidence.checkpoint import NoteVerifier, parse_signed_note, verify_checkpoint
from services.evidence.errors import NoteError
from services.ingest.domain.events import EVENT_TYPES_BY_NAME
from services.ingest.domain.merkle import (
    consistency_proof,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from services.ingest.domain.records import (
    StoredRecord,
    SystemPayload,
    decode_canonical_record,
    decode_dimensions,
    decode_system_payload,
    format_timestamp,
    record_format,
    record_leaf_hash,
)
from services.ingest.models import EventRecord
from services.ingest.repository import (
    CHECKPOINTS,
    COMPUTED_LEVELS,
    LEAVES,
    NODES,
    RECORDS,
    DatabaseNodeStore,
    stored_record,
)

PROGRESS_EVERY = 10_000


@dataclass
class Report:
    """What a verification found: passed checks, the first failure, and notes.

    An offline proof check with leaf data also gives the record the leaf covers and, for a
    version-2 record (a system event: an access or erasure record), its decoded payload: the
    summary and details (an access record's principal, action, resource, outcome) the proof covers.
    """

    checks: list[str] = field(default_factory=list)
    failure: str | None = None
    notes: list[str] = field(default_factory=list)
    record: StoredRecord | None = None
    payload: SystemPayload | None = None
    # A database check: the newest checkpoint whose root the recomputed tree matched.
    head: VerifiedHead | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def covered(self) -> list[tuple[str, str]]:
        """What the leaf data says, field by field (values as decoded, for display)."""
        record = self.record
        if record is None:
            return []
        fields = [
            ("format", record_format(record.version)),
            ("event_id", record.event_id),
            ("type", record.type),
            ("source", record.source),
            ("occurred_at", format_timestamp(record.occurred_at)),
            ("subject_pseudonym", record.subject_pseudonym),
        ]
        if self.payload is not None:
            fields.append(("summary", self.payload.summary))
            fields.extend((f"details.{name}", value) for name, value in sorted(self.payload.details.items()))
        if record.dimensions is not None:
            dimensions = decode_dimensions(record.dimensions)  # decode_canonical_record checked it
            fields.extend((f"details.{name}", value) for name, value in sorted(dimensions.items()))
        return fields

    def passed(self, what: str) -> None:
        self.checks.append(what)

    def fail(self, what: str) -> Report:
        if self.failure is None:
            self.failure = what
        return self

    def print(self, out: TextIO) -> None:
        for check in self.checks:
            print(f"ok    {check}", file=out)
        for note in self.notes:
            print(f"note  {note}", file=out)
        for name, value in self.covered():
            print(f"leaf  {name} {json.dumps(value, ensure_ascii=False)}", file=out)
        if self.failure is not None:
            print(f"FAIL  {self.failure}", file=out)


@dataclass(frozen=True)
class VerifiedHead:
    """A checkpoint that a verification found the log to match: where the next incremental run starts."""

    tree_size: int
    root_hash: bytes

    def to_json(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root_hash": self.root_hash.hex()}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> VerifiedHead:
        tree_size, root_hash = int(document["tree_size"]), bytes.fromhex(str(document["root_hash"]))
        if tree_size < 0 or len(root_hash) != 32:
            raise ValueError("a verified head has a tree size of at least 0 and a 32-byte root hash")
        return cls(tree_size=tree_size, root_hash=root_hash)


def load_head(path: Path) -> VerifiedHead | None:
    """The head an earlier run stored in ``path`` (None when there is no file yet)."""
    if not path.exists():
        return None
    return VerifiedHead.from_json(json.loads(path.read_text()))


def store_head(path: Path, head: VerifiedHead) -> None:
    """Replace ``path`` atomically: a run killed half-way leaves the old head, never a torn file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(head.to_json()) + "\n")
    partial.replace(path)


# --- keys -------------------------------------------------------------------------------------------


@dataclass
class TrustedKeys:
    verifiers: list[NoteVerifier] = field(default_factory=list)
    # PEM Ed25519 keys without a name: the name comes from the note's signature line.
    unnamed: list[ed25519.Ed25519PublicKey] = field(default_factory=list)
    ca_pem: list[str] = field(default_factory=list)

    def for_note(self, note: str) -> list[NoteVerifier]:
        names = {signature.key_name for signature in parse_signed_note(note).signatures}
        return [*self.verifiers, *(NoteVerifier(name=n, public_key=k) for n in names for k in self.unnamed)]


def load_keys(paths: Iterable[Path]) -> TrustedKeys:
    """Keys from files: C2SP verifier keys (one a line), PEM Ed25519 public keys or certificates,
    or the JSON of signing's ListPublicKeys (its note verifier keys and CA certificates)."""
    keys = TrustedKeys()
    for path in paths:
        text = path.read_text()
        stripped = text.strip()
        if stripped.startswith("{"):
            document = json.loads(stripped)
            for key in document.get("publicKeys", document.get("public_keys", [])):
                vkey = key.get("noteVerifierKey") or key.get("note_verifier_key")
                if vkey:
                    keys.verifiers.append(NoteVerifier.from_vkey(vkey))
            keys.ca_pem.extend(document.get("certificateChainPem", document.get("certificate_chain_pem", [])))
        elif "-----BEGIN CERTIFICATE-----" in text:
            keys.ca_pem.append(text)
        elif "-----BEGIN PUBLIC KEY-----" in text:
            public_key = serialization.load_pem_public_key(text.encode())
            if not isinstance(public_key, ed25519.Ed25519PublicKey):
                raise ValueError(f"{path}: checkpoint keys are Ed25519")
            keys.unnamed.append(public_key)
        else:
            keys.verifiers.extend(
                NoteVerifier.from_vkey(line.strip()) for line in text.splitlines() if line.strip()
            )
    return keys


# --- offline ----------------------------------------------------------------------------------------


def _bytes(document: dict[str, Any], *names: str) -> bytes:
    for name in names:
        if document.get(name):
            return base64.b64decode(document[name])
    return b""


def _int(document: dict[str, Any], *names: str) -> int | None:
    for name in names:
        if name in document:
            return int(document[name])
    return None


def verify_proof(
    proof: dict[str, Any],
    *,
    keys: TrustedKeys,
    receipt: dict[str, Any] | None = None,
    checkpoint: dict[str, Any] | None = None,
    openssl: str | None = "openssl",
) -> Report:
    """Offline check of an inclusion proof (and optionally the receipt it belongs to)."""
    report = Report()
    leaf_index = _int(proof, "leafIndex", "leaf_index") or 0
    tree_size = _int(proof, "treeSize", "tree_size") or 0
    claimed_leaf = _bytes(proof, "leafHash", "leaf_hash")
    leaf_data = _bytes(proof, "leafData", "leaf_data")
    path = [base64.b64decode(value) for value in proof.get("hashes", [])]
    if leaf_data:
        if leaf_hash(leaf_data) != claimed_leaf:
            return report.fail("the leaf data does not hash to the leaf hash")
        try:
            record = decode_canonical_record(leaf_data)
        except ValueError as error:
            return report.fail(f"the leaf data is not a canonical record: {error}")
        report.passed(f"leaf data of event {record.event_id} hashes to the leaf hash")
        report.record = record
        _describe_coverage(report, record)
    else:
        record = None
        report.notes.append("no leaf data in the proof: the leaf hash is taken as given")
    if receipt is not None:
        receipt = receipt.get("receipt", receipt)
        receipt_hash = _bytes(receipt, "leafHash", "leaf_hash")
        if receipt_hash != claimed_leaf:
            return report.fail("the receipt's leaf hash is not the proof's leaf hash")
        receipt_id = receipt.get("eventId", receipt.get("event_id"))
        if record is not None and receipt_id != record.event_id:
            return report.fail(f"the receipt is for event {receipt_id}, the proof for {record.event_id}")
        receipt_index = _int(receipt, "leafIndex", "leaf_index")
        if receipt_index is not None and receipt_index != leaf_index:
            return report.fail("the receipt's leaf index is not the proof's")
        report.passed(f"receipt of event {receipt_id} matches the proof")
    signed = checkpoint or proof.get("checkpoint")
    if not signed:
        return report.fail("no checkpoint to verify the proof against (pass --checkpoint)")
    note = signed.get("note", "")
    try:
        body = verify_checkpoint(note, verifier_keys=keys.for_note(note))
    except NoteError as error:
        return report.fail(f"checkpoint signature: {error}")
    report.passed(f"checkpoint of tree size {body.tree_size} signed by a trusted key ({body.origin})")
    if body.tree_size != tree_size:
        return report.fail(f"the proof is for tree size {tree_size}, the checkpoint for {body.tree_size}")
    if not verify_inclusion(
        leaf_hash=claimed_leaf, leaf_index=leaf_index, tree_size=tree_size, proof=path, root=body.root_hash
    ):
        return report.fail(f"the audit path does not lead from leaf {leaf_index} to the checkpoint root")
    report.passed(f"audit path of {len(path)} hashes leads from leaf {leaf_index} to the signed root")
    token = _bytes(signed, "timestampToken", "timestamp_token")
    if not token:
        report.notes.append("the checkpoint carries no RFC 3161 token")
    elif not keys.ca_pem:
        report.notes.append("RFC 3161 token not checked: no TSA CA certificate given")
    elif openssl is None or shutil.which(openssl) is None:
        report.notes.append("RFC 3161 token not checked: openssl not found")
    else:
        outcome = openssl_verify_token(openssl=openssl, token=token, data=note.encode(), ca_pem=keys.ca_pem)
        if outcome is not None:
            return report.fail(f"RFC 3161 token: {outcome}")
        report.passed(
            f"RFC 3161 token over the checkpoint note verifies (openssl ts; tsa {signed.get('tsa', '')})"
        )
    return report


def _describe_coverage(report: Report, record: StoredRecord) -> None:
    """Say what the leaf covers: a version-2 record its payload (decoded into the report), a
    version-1 system event not its summary and details."""
    if record.payload is not None:
        report.payload = decode_system_payload(record.payload)  # decode_canonical_record checked it
        report.passed(
            f"the leaf is an {record_format(2)} record: it covers the event's payload "
            f"(summary and {len(report.payload.details)} details, listed below)"
        )
        return
    if record.dimensions is not None:
        report.passed(
            f"the leaf is an {record_format(3)} record: it covers the event's dimensions "
            f"({len(decode_dimensions(record.dimensions))} non-personal details in clear, listed below)"
        )
        return
    event_type = EVENT_TYPES_BY_NAME.get(record.type)
    if event_type is not None and event_type.system:
        report.notes.append(
            f"the leaf is an {record_format(1)} record of a {record.type} system event (stored before "
            "version 2): it does not cover the event's summary and details"
        )


def openssl_verify_token(
    *,
    openssl: str,
    token: bytes,
    ca_pem: Sequence[str],
    data: bytes | None = None,
    digest_hex: str | None = None,
) -> str | None:
    """None when `openssl ts -verify` accepts the token for `data` (or for the hex `digest_hex` of a
    file, `-digest`), else openssl's complaint."""
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        (folder / "token.der").write_bytes(token)
        (folder / "ca.pem").write_text("\n".join(ca_pem))
        if digest_hex is not None:
            imprint = ["-digest", digest_hex]
        else:
            (folder / "data").write_bytes(data or b"")
            imprint = ["-data", str(folder / "data")]
        result = subprocess.run(
            [
                openssl, "ts", "-verify", "-token_in",
                "-in", str(folder / "token.der"),
                *imprint,
                "-CAfile", str(folder / "ca.pem"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )  # fmt: skip
    if result.returncode == 0 and "Verification: OK" in result.stdout:
        return None
    said = (result.stdout + result.stderr).strip().splitlines()
    return said[-1] if said else "failed"


# --- database ---------------------------------------------------------------------------------------


class _CompactRange:
    """The right frontier of a growing RFC 6962 tree: O(log n) memory, emits each completed node."""

    def __init__(self, frontier: Sequence[tuple[int, bytes]] = (), size: int = 0) -> None:
        # A tree of ``size`` leaves is resumed from its perfect subtrees, largest first.
        self._stack: list[tuple[int, bytes]] = list(frontier)  # (level, hash), levels strictly decreasing
        self.size = size

    def append(self, value: bytes, completed: Callable[[int, int, bytes], None]) -> None:
        level, current, index = 0, value, self.size
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            current = node_hash(left, current)
            level, index = level + 1, index >> 1
            completed(level, index, current)
        self._stack.append((level, current))
        self.size += 1

    def root(self) -> bytes:
        result = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            result = node_hash(left, result)
        return result


def verify_database(
    engine: Engine, *, keys: TrustedKeys | None = None, progress: TextIO | None = sys.stderr
) -> Report:
    """Recompute every leaf hash, Merkle node and checkpoint root from the stored records."""
    report = Report()
    with Session(engine) as session:
        checkpoints = {
            row.tree_size: row
            for row in session.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.tree_size))
        }
        replay = _replay_leaves(session, checkpoints, progress=progress)
        if replay.failure is not None:
            return report.fail(replay.failure)
        size = replay.tree_size
        report.passed(f"{size} records re-hashed; leaf indices 0..{size - 1} gap-free")
        report.passed("every stored Merkle node matches the recomputed tree")
        covered = [tree_size for tree_size in checkpoints if tree_size <= size]
        report.passed(f"{len(covered)} checkpoint roots match the recomputed tree")
        beyond = [tree_size for tree_size in checkpoints if tree_size > size]
        if beyond:
            return report.fail(f"checkpoints name tree sizes beyond the log: {beyond[:5]}")
        failure = _check_integrated(session, last_seq=replay.last_seq, notes=report.notes)
        if failure is not None:
            return report.fail(failure)
        if keys is not None:
            failure = _check_signatures(checkpoints, keys)
            if failure is not None:
                return report.fail(failure)
            report.passed(f"{len(checkpoints)} checkpoint signatures verify")
        if covered:
            newest = checkpoints[covered[-1]]
            report.head = VerifiedHead(tree_size=newest.tree_size, root_hash=bytes(newest.root_hash))
    return report


def verify_incremental(
    engine: Engine,
    *,
    since: VerifiedHead | None,
    keys: TrustedKeys | None = None,
    progress: TextIO | None = sys.stderr,
) -> Report:
    """Verify from the checkpoint ``since`` (verified before) to the newest stored checkpoint; the
    whole database when ``since`` is None. The module docstring says what this does not catch."""
    if since is None or since.tree_size == 0:
        return verify_database(engine, keys=keys, progress=progress)
    report = Report()
    old_size, old_root = since.tree_size, since.root_hash
    with Session(engine) as session:
        store = DatabaseNodeStore(session)
        resumed = _resume(session, store, since, report)
        if resumed is None:
            return report
        remembered, tree = resumed
        checkpoints = {
            row.tree_size: row
            for row in session.execute(
                select(CHECKPOINTS)
                .where(CHECKPOINTS.c.tree_size > old_size)
                .order_by(CHECKPOINTS.c.tree_size)
            )
        }
        last_old_seq = session.execute(
            select(LEAVES.c.seq).where(LEAVES.c.leaf_index == old_size - 1)
        ).scalar_one_or_none()
        if last_old_seq is None:
            return report.fail(f"leaf {old_size - 1} of the verified tree is missing")
        replay = _replay_leaves(session, checkpoints, progress=progress, tree=tree)
        if replay.failure is not None:
            return report.fail(replay.failure)
        size = replay.tree_size
        report.passed(
            f"{size - old_size} new records re-hashed; leaf indices {old_size}..{size - 1} gap-free"
        )
        report.passed("every stored Merkle node above them matches the recomputed tree")
        covered = [tree_size for tree_size in checkpoints if tree_size <= size]
        report.passed(f"{len(covered)} new checkpoint roots match the recomputed tree")
        beyond = [tree_size for tree_size in checkpoints if tree_size > size]
        if beyond:
            return report.fail(f"checkpoints name tree sizes beyond the log: {beyond[:5]}")
        failure = _check_integrated(
            session, last_seq=max(replay.last_seq, last_old_seq), notes=report.notes, after_seq=last_old_seq
        )
        if failure is not None:
            return report.fail(failure)
        newest = checkpoints[covered[-1]] if covered else remembered
        new_root = bytes(newest.root_hash)
        proof = consistency_proof(old_size=old_size, new_size=newest.tree_size, store=store)
        if not verify_consistency(
            old_size=old_size, new_size=newest.tree_size, old_root=old_root, new_root=new_root, proof=proof
        ):
            return report.fail(
                f"the consistency proof from tree size {old_size} to {newest.tree_size} does not verify"
            )
        report.passed(f"consistency proof from tree size {old_size} to {newest.tree_size} verifies")
        if keys is not None:
            failure = _check_signatures({**checkpoints, old_size: remembered}, keys)
            if failure is not None:
                return report.fail(failure)
            report.passed(f"{len(checkpoints) + 1} checkpoint signatures verify")
        report.head = VerifiedHead(tree_size=newest.tree_size, root_hash=new_root)
    return report


def _resume(
    session: Session, store: DatabaseNodeStore, since: VerifiedHead, report: Report
) -> tuple[Any, _CompactRange] | None:
    """The remembered checkpoint, still stored with its root, and the old tree's frontier read from
    the stored nodes and authenticated by folding to that root; None (and the report failed) if not."""
    old_size, old_root = since.tree_size, since.root_hash
    remembered = session.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.tree_size == old_size)).first()
    if remembered is None:
        report.fail(
            f"the checkpoint of tree size {old_size} verified before is no longer stored: "
            "the log was rolled back or rewritten"
        )
        return None
    if bytes(remembered.root_hash) != old_root:
        report.fail(
            f"the checkpoint of tree size {old_size} now has another root than when it was verified: "
            "the log was rewritten"
        )
        return None
    report.passed(f"the checkpoint of tree size {old_size} verified before is stored, same root")
    pieces = _frontier_keys(old_size)
    nodes = store.get_nodes(pieces)
    if any(key not in nodes for key in pieces):
        report.fail(f"stored Merkle nodes of the tree of size {old_size} are missing")
        return None
    tree = _CompactRange([(level, nodes[(level, index)]) for level, index in pieces], size=old_size)
    if tree.root() != old_root:
        report.fail(
            f"the stored Merkle nodes of the tree of size {old_size} do not fold to its verified root"
        )
        return None
    return remembered, tree


def _frontier_keys(size: int) -> list[tuple[int, int]]:
    """(level, index) of the perfect subtrees that make up a tree of ``size`` leaves, largest first."""
    keys, position = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            keys.append((level, position >> level))
            position += 1 << level
    return keys


@dataclass
class _Replay:
    """The log re-hashed leaf by leaf: how far it got, the last record seq integrated, what differed."""

    tree_size: int = 0
    last_seq: int = 0
    failure: str | None = None


def _replay_leaves(
    session: Session,
    checkpoints: dict[int, Any],
    *,
    progress: TextIO | None,
    tree: _CompactRange | None = None,
) -> _Replay:
    """Re-hash every leaf's record in order (from ``tree.size`` on, when resuming a verified tree),
    rebuilding the tree and checking the stored nodes and every checkpoint root on the way; stops at
    the first difference."""
    total = int(session.execute(select(func.count()).select_from(LEAVES)).scalar_one())
    tree = tree or _CompactRange()
    expected_nodes: dict[tuple[int, int], bytes] = {}
    replay = _Replay()

    def completed(level: int, index: int, value: bytes) -> None:
        expected_nodes[(level, index)] = value

    while True:
        rows = session.execute(
            select(
                LEAVES.c.leaf_index,
                LEAVES.c.leaf_hash.label("integrated_hash"),
                LEAVES.c.seq.label("leaf_seq"),
                RECORDS,
            )
            .select_from(LEAVES.outerjoin(RECORDS, RECORDS.c.event_id == LEAVES.c.event_id))
            .where(LEAVES.c.leaf_index >= tree.size)
            .order_by(LEAVES.c.leaf_index)
            .limit(PROGRESS_EVERY)
        ).all()
        if not rows:
            break
        for row in rows:
            replay.failure = _leaf_failure(row, tree_size=tree.size)
            if replay.failure is not None:
                return replay
            tree.append(bytes(row.leaf_hash), completed)
            replay.last_seq = max(replay.last_seq, row.leaf_seq)
            checkpoint = checkpoints.get(tree.size)
            if checkpoint is not None and tree.root() != bytes(checkpoint.root_hash):
                replay.failure = (
                    f"checkpoint of tree size {tree.size}: its root does not match the recomputed tree"
                )
                return replay
        mismatch = _compare_nodes(session, expected_nodes)
        if mismatch is not None:
            replay.failure = f"stored Merkle node (level {mismatch[0]}, index {mismatch[1]}) differs"
            return replay
        expected_nodes.clear()
        if progress is not None:
            print(f"verify: {tree.size}/{total} records checked", file=progress, flush=True)
    replay.tree_size = tree.size
    return replay


def _leaf_failure(row: Any, *, tree_size: int) -> str | None:
    """What is wrong with the next leaf of a tree of ``tree_size`` leaves, None when nothing is:
    its index follows on, its record exists, and the record re-hashes to the logged leaf hash."""
    if row.leaf_index != tree_size:
        return f"leaf indices are not gap-free: expected {tree_size}, found {row.leaf_index}"
    if row.event_id is None:
        return f"leaf {row.leaf_index}: its record is missing from event_records"
    record = EventRecord(**{column.name: row._mapping[column] for column in RECORDS.columns})
    try:
        recomputed = record_leaf_hash(stored_record(record))
    except ValueError as error:
        return f"record {row.event_id} (leaf index {row.leaf_index}) cannot be re-encoded: {error}"
    if recomputed != bytes(row.integrated_hash) or recomputed != bytes(row.leaf_hash):
        return (
            f"record {row.event_id} (leaf index {row.leaf_index}) differs from what was logged: "
            "its recomputed leaf hash does not match"
        )
    return None


def _check_integrated(session: Session, *, last_seq: int, notes: list[str], after_seq: int = 0) -> str | None:
    """Every record up to the last integrated one (after ``after_seq``) has its leaf; those after it
    are noted."""
    orphans = session.execute(
        select(RECORDS.c.event_id, RECORDS.c.seq)
        .where(
            RECORDS.c.seq > after_seq,
            RECORDS.c.seq <= last_seq,
            ~RECORDS.c.event_id.in_(select(LEAVES.c.event_id)),
        )
        .order_by(RECORDS.c.seq)
        .limit(1)
    ).first()
    if orphans is not None:
        return f"record {orphans.event_id} was skipped by the integrator (no leaf)"
    waiting = int(
        session.execute(
            select(func.count()).select_from(RECORDS).where(RECORDS.c.seq > last_seq)
        ).scalar_one()
    )
    if waiting:
        notes.append(f"{waiting} accepted records are not integrated yet")
    return None


def _check_signatures(checkpoints: dict[int, Any], keys: TrustedKeys) -> str | None:
    for size, checkpoint in checkpoints.items():
        try:
            body = verify_checkpoint(checkpoint.note, verifier_keys=keys.for_note(checkpoint.note))
        except NoteError as error:
            return f"checkpoint of tree size {size}: signature: {error}"
        if body.tree_size != size or body.root_hash != bytes(checkpoint.root_hash):
            return f"checkpoint of tree size {size}: the signed note says otherwise"
    return None


def _compare_nodes(session: Session, expected: dict[tuple[int, int], bytes]) -> tuple[int, int] | None:
    keys = sorted(expected)
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        stored = {
            (row.level, row.idx): bytes(row.hash)
            for row in session.execute(
                select(NODES.c.level, NODES.c.idx, NODES.c.hash).where(
                    tuple_(NODES.c.level, NODES.c.idx).in_(chunk)
                )
            )
        }
        for key in chunk:
            # Nodes of the lowest levels are computed from the leaves, not stored (logs written
            # before that may still hold some: those are compared too).
            if key[0] <= COMPUTED_LEVELS and key not in stored:
                continue
            if stored.get(key) != expected[key]:
                return key
    return None
