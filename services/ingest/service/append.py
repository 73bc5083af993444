"""The append path: validate, resolve keys, seal, hash, commit (grouped), then acknowledge.

Every append of every request goes through one ``Committer`` per process, which merges whatever is
waiting into one database transaction (group commit): a stream of 500-event batches and a crowd of
unary appends both pay one durable commit per transaction, not per event. A receipt is returned
only after the transaction that stored its event has committed.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from awareness.ingest.v1 import ingest_pb2
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.trace import SpanContext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.evidence.canonical import details_json, details_members, members_json
from services.evidence.envelope import NONCE_BYTES, seal_personal
from services.ingest import repository
from services.ingest.convert import event_input, receipt_message
from services.ingest.domain.access import AUDIT_EVENT_TYPE, access_facts, access_violations
from services.ingest.domain.errors import EventConflictError, ValidationError
from services.ingest.domain.events import (
    EVENT_TYPES_BY_NAME,
    MAX_PSEUDONYM_CHARS,
    Severity,
    canonical_event_id,
    new_event_id,
    parse_severity,
    plainly_valid,
    validate_event,
)
from services.ingest.domain.merkle import leaf_hash
from services.ingest.domain.minimisation import (
    UndeclaredDetails,
    declared_keys,
    free_text_keys,
    split_details,
    undeclared_violations,
)
from services.ingest.domain.records import (
    fingerprint_fields,
    format_timestamp_us,
    record_bytes,
    subject_fingerprint_key,
    system_payload_json,
)
from services.ingest.domain.redaction import RedactionSettings
from services.ingest.keys import KeyLookup, SubjectKey, SubjectKeys
from services.ingest.repository import StoredReceipt, to_us
from services.ingest.service.reads import load_receipt
from services.runtime.batching import Coalescer
from services.runtime.db import run_db, store_unavailable, transaction
from services.runtime.errors import AwarenessError, FieldViolation, UnavailableError
from services.runtime.metrics import ServiceMetrics
from services.runtime.timestamps import timestamp_from_us
from services.runtime.tracing import batch_span, current_span_context
from services.runtime.validation import message_violations

log = logging.getLogger("awareness.ingest")

MAX_BATCH_EVENTS = 500


# Not frozen, like the other per-event records here: a frozen dataclass sets each field through
# object.__setattr__, which doubles the cost of making one (about 1 µs for eleven fields).
@dataclass(slots=True)
class Accepted:
    """An event's receipt as the append answers it."""

    event_id: str
    leaf_hash: bytes
    receive_time_us: int
    leaf_index: int | None
    replayed: bool


AppendOutcome = Accepted | AwarenessError


def receipt_of(
    outcome: Accepted, stamps: dict[int, Timestamp] | None = None, *, into: ingest_pb2.Receipt | None = None
) -> ingest_pb2.Receipt:
    """The receipt an append answers; `stamps` keeps the receive times already converted in this
    answer (a batch shares one); `into`, the answer's receipt field to fill in place."""
    receive_time = None
    if stamps is not None:
        receive_time = stamps.get(outcome.receive_time_us)
        if receive_time is None:
            receive_time = stamps[outcome.receive_time_us] = timestamp_from_us(outcome.receive_time_us)
    return receipt_message(
        event_id=outcome.event_id,
        leaf_hash=outcome.leaf_hash,
        receive_time_us=outcome.receive_time_us,
        leaf_index=outcome.leaf_index,
        checkpoint=None,
        receive_time=receive_time,
        into=into,
    )


@dataclass(slots=True)
class EnrichmentItem:
    """What scoring and policy need of a new event; `details` is plaintext and stays in memory."""

    event_id: str
    pseudonym: str
    type: str
    source: str
    severity: int
    occurred_at_us: int
    summary_length: int
    detail_count: int
    details: dict[str, str]
    # The appending request's span, so the enrichment batch can join (or link to) its trace.
    origin: SpanContext | None = None


@dataclass(slots=True)
class PendingRow:
    event_id: str
    fingerprint: str
    leaf_hash: bytes
    receive_time_us: int
    record: tuple[Any, ...]  # in repository.RECORD_COLUMNS order
    metadata: tuple[Any, ...]  # in repository.METADATA_COLUMNS order
    enrichment: EnrichmentItem | None
    # Access records (audit.action events) only: their index rows, in repository.ACCESS_COLUMNS order.
    access: tuple[tuple[Any, ...], ...] = ()


@dataclass
class _Work:
    rows: list[PendingRow]
    future: asyncio.Future[list[StoredReceipt | None]]
    origin: SpanContext | None = None


class Committer:
    """Group commit: one writer task merges waiting appends into one transaction.

    The transaction runs on its own thread (never queued behind reads in the shared pool), checks
    which event ids exist already, and inserts the rest: an append costs one round of the committer,
    however many callers wait in it.
    """

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        gate: repository.WriteGate,
        max_rows: int = 5000,
        on_commit: Callable[[int], None] = lambda count: None,
        on_storing: Callable[[list[SpanContext]], None] = lambda origins: None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._sessions = sessions
        self._gate = gate
        self._max_rows = max_rows
        self._on_commit = on_commit
        self._on_storing = on_storing
        self._queue: asyncio.Queue[_Work] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-commit")
        self.transactions = 0
        self.waiting_rows = 0  # events queued for the next group commit (not yet taken by it)
        if metrics is not None:
            metrics.gauge("queue_depth", "Events waiting in the group-commit queue").set_function(
                lambda: self.waiting_rows
            )
            self._commit_rows = metrics.histogram(
                "group_commit_events",
                "Events stored per group-commit transaction",
                buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
            )
        self._metrics = metrics

    async def submit(self, rows: list[PendingRow]) -> list[StoredReceipt | None]:
        """Per row: None when this commit stored it, else what an earlier append stored."""
        future: asyncio.Future[list[StoredReceipt | None]] = asyncio.get_running_loop().create_future()
        self.waiting_rows += len(rows)
        await self._queue.put(_Work(rows=rows, future=future, origin=current_span_context()))
        return await future

    async def run(self) -> None:
        while True:
            works = [await self._queue.get()]
            count = len(works[0].rows)
            while count < self._max_rows and not self._queue.empty():
                works.append(self._queue.get_nowait())
                count += len(works[-1].rows)
            self.waiting_rows -= count
            rows = [row for work in works for row in work.rows]
            origins = [work.origin for work in works if work.origin is not None]
            try:
                with batch_span(
                    "ingest.group_commit",
                    service="ingest",
                    origins=origins,
                    attributes={"awareness.events": count},
                ):
                    # The thread runs in a copy of this context, so its database spans join the batch span.
                    commit = functools.partial(contextvars.copy_context().run, self._commit, rows, origins)
                    results = await asyncio.get_running_loop().run_in_executor(self._executor, commit)
            except Exception as error:  # the database refused: every waiting append fails with it
                log.warning("append transaction failed", extra={"error": type(error).__name__})
                failure: BaseException = error if isinstance(error, AwarenessError) else store_unavailable()
                for work in works:
                    if not work.future.done():
                        work.future.set_exception(failure)
                continue
            self.transactions += 1
            stored = sum(1 for result in results if result is None)
            if self._metrics is not None:
                self._commit_rows.observe(stored)
            self._on_commit(stored)
            position = 0
            for work in works:
                if not work.future.done():
                    work.future.set_result(results[position : position + len(work.rows)])
                position += len(work.rows)

    def _commit(self, rows: list[PendingRow], origins: list[SpanContext]) -> list[StoredReceipt | None]:
        results: list[StoredReceipt | None] = [None] * len(rows)
        first_of: dict[str, int] = {}
        duplicates: dict[int, int] = {}
        to_insert: list[int] = []
        for position, row in enumerate(rows):
            if row.event_id in first_of:
                duplicates[position] = first_of[row.event_id]
            else:
                first_of[row.event_id] = position
                to_insert.append(position)
        for attempt in range(5):
            # Optimistic first: new ids are the common case, and the unique index on event_id finds
            # the others for free. Only when it refuses the batch is it retried with a lookup first
            # (replays, or another replica storing the same id between the two).
            look_first = attempt > 0
            try:
                with self._gate, transaction(self._sessions) as session:
                    fresh = to_insert
                    if look_first:
                        existing = repository.find_receipts(
                            session, event_ids=[rows[i].event_id for i in to_insert]
                        )
                        for i in to_insert:
                            results[i] = existing.get(rows[i].event_id)
                        fresh = [i for i in to_insert if rows[i].event_id not in existing]
                    repository.store_events(
                        session,
                        records=[rows[i].record for i in fresh],
                        metadata=[rows[i].metadata for i in fresh],
                        access=[entry for i in fresh if rows[i].access for entry in rows[i].access],
                    )
                    if fresh:
                        self._on_storing(origins)  # before the commit: see Integrator.storing
                break
            except IntegrityError:
                if look_first:  # another replica stored some of these ids after our lookup
                    log.info("append raced with another writer; retrying", extra={"rows": len(to_insert)})
                results = [None] * len(rows)
        else:
            raise UnavailableError(
                "could not store the batch after repeated conflicts", reason="STORE_CONFLICT"
            )
        for position, first in duplicates.items():
            original = rows[first]
            results[position] = results[first] or StoredReceipt(
                event_id=original.event_id,
                content_fingerprint=original.fingerprint,
                leaf_hash=original.leaf_hash,
                receive_time_us=original.receive_time_us,
                leaf_index=None,
            )
        return results


@dataclass(slots=True)
class _Candidate:
    """A valid submitted event, ready to be sealed once its subject's key is known."""

    position: int
    event_id: str
    type: str
    source: str
    subject: str  # the identifier; for system events, the pseudonym
    summary: str
    details: dict[str, str]
    occurred_us: int
    occurred_text: str  # format_timestamp form, as the record and fingerprint spell it
    severity: int
    encoded_details: str  # details_json(details): spelled once for the fingerprint (and the seal)
    fingerprint: str
    system: bool
    # Client events: the declared details split by kind (services.ingest.domain.minimisation). The
    # seal holds only the personal ones; the dimensions are stored in clear, covered by the leaf.
    personal: dict[str, str] | None = None
    encoded_personal: str = ""
    dimensions: str | None = None
    row: PendingRow | None = None
    key: SubjectKey | None = None
    followers: list[int] | None = None  # positions of later copies of this event id in the call
    copies: list[_Candidate] | None = None  # those later copies


class LogWriter:
    """AppendEvent(s): one outcome per submitted event, in order."""

    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        keys: SubjectKeys,
        committer: Committer,
        fingerprint_secret: bytes,
        clock_skew: timedelta,
        on_accepted: Callable[[list[EnrichmentItem]], None] = lambda items: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        metrics: ServiceMetrics | None = None,
        undeclared_details: UndeclaredDetails = UndeclaredDetails.REFUSE,
        redaction: RedactionSettings | None = None,
    ) -> None:
        self._sessions = sessions
        self._undeclared = undeclared_details
        self._redaction = redaction
        self._keys = keys
        self._committer = committer
        self._secret = fingerprint_secret
        self._clock_skew = clock_skew
        self._on_accepted = on_accepted
        self._clock = clock
        self._metrics = metrics
        # Replays are looked for once per batch of concurrent appends, not once per request.
        self._replays: Coalescer[str, StoredReceipt | None] = Coalescer(self._find_batch, max_items=5000)
        if metrics is not None:
            self._appended = metrics.counter(
                "events_appended_total", "Events submitted to the log, by outcome", ["outcome"]
            )
            for outcome in APPEND_OUTCOMES:
                self._appended.labels(outcome)
            self._append_latency = metrics.histogram(
                "append_batch_duration_seconds",
                "Time to answer one append call (one event or one stream batch), commit included",
            )

    async def append_event(
        self, message: ingest_pb2.Event, *, system_writer: str | None
    ) -> ingest_pb2.AppendEventResponse:
        """AppendEvent: the event's receipt, or its refusal raised.

        A replay of an integrated event answers the stored receipt (with its leaf index and the
        checkpoint covering it); a new event's receipt has neither yet.
        """
        [outcome] = await self.append([message], system_writer=system_writer, unary=True)
        if not isinstance(outcome, Accepted):
            raise outcome
        if outcome.replayed and outcome.leaf_index is not None:
            receipt = await load_receipt(self._sessions, outcome.event_id)
        else:
            receipt = receipt_of(outcome)
        return ingest_pb2.AppendEventResponse(receipt=receipt, replayed=outcome.replayed)

    async def append(
        self, messages: Sequence[ingest_pb2.Event], *, system_writer: str | None, unary: bool = False
    ) -> list[AppendOutcome]:
        started = time.perf_counter()
        try:
            outcomes = await self._append(messages, system_writer=system_writer, unary=unary)
        except BaseException:
            self._count({"failed": len(messages)})
            raise
        if self._metrics is not None:
            self._append_latency.observe(time.perf_counter() - started)
            counts: dict[str, int] = {}
            for outcome in outcomes:
                name = _outcome_name(outcome)
                counts[name] = counts.get(name, 0) + 1
            self._count(counts)
        return outcomes

    def _count(self, counts: dict[str, int]) -> None:
        if self._metrics is not None:
            for outcome, count in counts.items():
                self._appended.labels(outcome).inc(count)

    async def _append(
        self, messages: Sequence[ingest_pb2.Event], *, system_writer: str | None, unary: bool
    ) -> list[AppendOutcome]:
        now = self._clock()
        origin = current_span_context()
        outcomes: list[AppendOutcome | None] = [None] * len(messages)
        candidates, primaries = self._candidates(
            messages, now=now, system_writer=system_writer, unary=unary, outcomes=outcomes
        )
        sealed = [c for c in primaries if not c.system]
        lookups = [_lookup(c) for c in sealed]
        existing: dict[str, StoredReceipt] = {}
        if self._keys.all_cached(lookups):
            await self._resolve_keys(sealed, lookups)
        else:
            # gdpr must be asked: meanwhile find the replays (no failed optimistic insert for them).
            ids = [c.event_id for c in primaries]
            stored, _ = await asyncio.gather(self._replays.submit(ids), self._resolve_keys(sealed, lookups))
            existing = {event_id: receipt for event_id, receipt in zip(ids, stored, strict=True) if receipt}
        new = [c for c in primaries if c.event_id not in existing]
        # Fingerprints need the keys (they are keyed with them); fingerprinting, sealing and hashing
        # are CPU work: large batches off the event loop, so calls keep flowing.
        prepare = functools.partial(_prepare, primaries, new, to_us(now), secret=self._secret, origin=origin)
        if len(primaries) > 16:
            await run_db(prepare)
        else:
            prepare()
        stored = await self._committer.submit([c.row for c in new if c.row is not None]) if new else []
        answers: dict[str, StoredReceipt | None] = dict(existing)
        answers.update({c.event_id: result for c, result in zip(new, stored, strict=True)})
        accepted_items = _settle(primaries, candidates, answers=answers, outcomes=outcomes)
        if accepted_items:
            self._on_accepted(accepted_items)
        return [outcome for outcome in outcomes if outcome is not None]

    def _candidates(
        self,
        messages: Sequence[ingest_pb2.Event],
        *,
        now: datetime,
        system_writer: str | None,
        unary: bool,
        outcomes: list[AppendOutcome | None],
    ) -> tuple[list[_Candidate], list[_Candidate]]:
        """Every valid event as a candidate, and the first of each event id (the primaries): later
        copies of an id in the call follow their primary. A refused event's outcome is set here."""
        latest_us = to_us(now + self._clock_skew)
        candidates: list[_Candidate] = []
        first_by_id: dict[str, _Candidate] = {}
        for position, message in enumerate(messages):
            checked: _Candidate | AwarenessError | None = self._plain_candidate(
                message, position=position, latest_us=latest_us
            )
            if checked is None:
                prefix = "event" if unary else f"events[{position}]"
                checked = self._check(
                    message, now=now, prefix=prefix, system_writer=system_writer, position=position
                )
            if isinstance(checked, AwarenessError):
                outcomes[position] = checked
                continue
            earlier = first_by_id.get(checked.event_id)
            if earlier is not None:
                if earlier.followers is None or earlier.copies is None:
                    earlier.followers, earlier.copies = [], []
                earlier.followers.append(position)
                earlier.copies.append(checked)
                candidates.append(checked)
                continue
            first_by_id[checked.event_id] = checked
            candidates.append(checked)
        return candidates, list(first_by_id.values())

    def _plain_candidate(
        self, message: ingest_pb2.Event, *, position: int, latest_us: int
    ) -> _Candidate | None:
        """The common case without building the domain input: a client event that plainly_valid
        accepts. None sends the message through _check, which names every violation."""
        stamp = message.occurred_at
        occurred_us = stamp.seconds * 1_000_000 + stamp.nanos // 1000
        severity = message.severity or int(Severity.INFO)
        details = dict(message.details)
        event_type, source, subject, summary = message.type, message.source, message.subject, message.summary
        event_id = message.event_id
        if not plainly_valid(
            event_id=event_id,
            type=event_type,
            source=source,
            subject=subject,
            occurred_at_us=occurred_us,
            latest_us=latest_us,
            severity=severity,
            summary=summary,
            details=details,
        ):
            return None
        if self._undeclared is UndeclaredDetails.REFUSE and not declared_keys(event_type).issuperset(details):
            return None  # _check names each undeclared key
        return self._candidate(
            position=position,
            event_id=event_id or new_event_id(),
            type=event_type,
            source=source,
            subject=subject,
            summary=summary,
            details=details,
            occurred_us=occurred_us,
            severity=severity,
            system=False,
        )

    def _check(
        self,
        message: ingest_pb2.Event,
        *,
        now: datetime,
        prefix: str,
        system_writer: str | None,
        position: int,
    ) -> _Candidate | AwarenessError:
        # Values no store can hold (NUL, unknown enum numbers, times out of range) refuse this event
        # alone, before anything converts them (services/ingest/app.py skips events in the generic check).
        unstorable = message_violations(message, prefix=prefix)
        if unstorable:
            return ValidationError(unstorable)
        event_type = EVENT_TYPES_BY_NAME.get(message.type)
        system = bool(event_type and event_type.system and system_writer is not None)
        extra: list[FieldViolation] = []
        if system:
            # System events carry no personal data: the pseudonym is named directly.
            event = event_input(message, subject=message.subject_pseudonym)
            if message.subject:
                extra.append(
                    FieldViolation(
                        f"{prefix}.subject", "must be empty for system events; set subject_pseudonym instead"
                    )
                )
            if len(message.subject_pseudonym) > MAX_PSEUDONYM_CHARS:
                extra.append(
                    FieldViolation(
                        f"{prefix}.subject_pseudonym", f"must be at most {MAX_PSEUDONYM_CHARS} characters"
                    )
                )
        else:
            event = event_input(message)
        violations = validate_event(
            event, now=now, clock_skew=self._clock_skew, field_prefix=prefix, system_writer=system_writer
        )
        if system:
            violations = [
                FieldViolation(f"{prefix}.subject_pseudonym", v.description)
                if v.field == f"{prefix}.subject"
                else v
                for v in violations
            ]
        violations.extend(extra)
        if system and event.type == AUDIT_EVENT_TYPE:
            violations.extend(
                access_violations(subject_pseudonym=event.subject, details=event.details, field_prefix=prefix)
            )
        elif not system and self._undeclared is UndeclaredDetails.REFUSE:
            violations.extend(undeclared_violations(event.type, event.details, field_prefix=prefix))
        if violations:
            return ValidationError(violations)
        event_id = canonical_event_id(event.event_id) if event.event_id else new_event_id()
        assert event_id is not None and event.occurred_at is not None
        severity = parse_severity(event.severity)
        assert severity is not None
        return self._candidate(
            position=position,
            event_id=event_id,
            type=event.type,
            source=event.source,
            subject=event.subject,
            summary=event.summary,
            details=event.details,
            occurred_us=to_us(event.occurred_at),
            severity=int(severity),
            system=system,
        )

    def _candidate(
        self,
        *,
        position: int,
        event_id: str,
        type: str,
        source: str,
        subject: str,
        summary: str,
        details: dict[str, str],
        occurred_us: int,
        severity: int,
        system: bool,
    ) -> _Candidate:
        """A validated event with its canonical spellings (and, for system events, fingerprint).

        A client event's details are minimised first: undeclared keys dropped (when they are not
        refused), free text redacted per source, and the rest split into dimensions and personal."""
        occurred_text = format_timestamp_us(occurred_us)
        clear: dict[str, str] = {}
        personal: dict[str, str] | None = None
        if not system:
            summary, details = self._minimised(type, source, summary, details)
            clear, personal = split_details(type, details)
        # The details, their dimensions and their personal part: each string escaped once for all three.
        members = details_members(details)
        spell = details_json if members is None else functools.partial(members_json, members)
        encoded_details = spell(details)
        dimensions = spell(clear) if clear else None
        encoded_personal = ""
        if personal is not None:
            encoded_personal = spell(personal) if clear else encoded_details
        return _Candidate(
            position=position,
            event_id=event_id,
            type=type,
            source=source,
            subject=subject,
            summary=summary,
            details=details,
            occurred_us=occurred_us,
            occurred_text=occurred_text,
            severity=severity,
            encoded_details=encoded_details,
            # System events (no personal data, no key) now; client events once their key is known.
            fingerprint=_fingerprint(
                self._secret,
                type,
                source,
                subject,
                occurred_text,
                severity,
                summary,
                details,
                encoded_details,
            )
            if system
            else "",
            system=system,
            personal=personal,
            encoded_personal=encoded_personal,
            dimensions=dimensions,
        )

    def _minimised(
        self, type: str, source: str, summary: str, details: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        """Summary and details with undeclared keys dropped and free text redacted."""
        declared = declared_keys(type)
        if not declared.issuperset(details):
            details = {name: value for name, value in details.items() if name in declared}
        if self._redaction is None:
            return summary, details
        redactor = self._redaction.for_source(source)
        if not redactor.kinds:
            return summary, details
        summary = redactor.redact(summary) if summary else summary
        free = free_text_keys(type)
        if free and not free.isdisjoint(details):
            details = {
                name: redactor.redact(value) if name in free else value for name, value in details.items()
            }
        return summary, details

    async def _find_batch(self, event_ids: list[str]) -> list[StoredReceipt | None]:
        found = await run_db(self._find, event_ids)
        return [found.get(event_id) for event_id in event_ids]

    def _find(self, event_ids: list[str]) -> dict[str, StoredReceipt]:
        with repository.reading(self._sessions) as session:
            return repository.find_receipts(session, event_ids=event_ids)

    async def _resolve_keys(self, candidates: list[_Candidate], lookups: list[KeyLookup]) -> None:
        if not candidates:
            return
        keys = await self._keys.keys_for(lookups)
        for candidate, key in zip(candidates, keys, strict=True):
            candidate.key = key


def _lookup(candidate: _Candidate) -> KeyLookup:
    return KeyLookup(candidate.subject, candidate.occurred_us, candidate.type)


_SEVERITY_LABELS = {int(severity): severity.label for severity in Severity}


APPEND_OUTCOMES = ("accepted", "replayed", "conflict", "invalid", "failed")


def _outcome_name(outcome: AppendOutcome) -> str:
    if isinstance(outcome, Accepted):
        return "replayed" if outcome.replayed else "accepted"
    if isinstance(outcome, EventConflictError):
        return "conflict"
    if isinstance(outcome, ValidationError):
        return "invalid"
    return "failed"


def _settle(
    primaries: list[_Candidate],
    candidates: list[_Candidate],
    *,
    answers: dict[str, StoredReceipt | None],
    outcomes: list[AppendOutcome | None],
) -> list[EnrichmentItem]:
    """Each candidate's outcome from what the commit answered for its event id (None: stored now);
    returns what enrichment needs of the events stored now."""
    accepted_items: list[EnrichmentItem] = []
    by_position = {c.position: c for c in candidates}
    for candidate in primaries:
        answer = answers[candidate.event_id]
        if answer is None and candidate.row is not None:
            outcomes[candidate.position] = Accepted(
                event_id=candidate.event_id,
                leaf_hash=candidate.row.leaf_hash,
                receive_time_us=candidate.row.receive_time_us,
                leaf_index=None,
                replayed=False,
            )
            if candidate.row.enrichment is not None:
                accepted_items.append(candidate.row.enrichment)
            if candidate.followers is None:
                continue
            original = StoredReceipt(
                event_id=candidate.event_id,
                content_fingerprint=candidate.fingerprint,
                leaf_hash=candidate.row.leaf_hash,
                receive_time_us=candidate.row.receive_time_us,
                leaf_index=None,
            )
        else:
            assert answer is not None
            original = answer
            outcomes[candidate.position] = _replay_or_conflict(original, candidate.fingerprint)
        for follower in candidate.followers or ():
            outcomes[follower] = _replay_or_conflict(original, by_position[follower].fingerprint)
    return accepted_items


def _replay_or_conflict(original: StoredReceipt, fingerprint: str) -> AppendOutcome:
    if original.content_fingerprint != fingerprint:
        return EventConflictError(event_id=original.event_id)
    return Accepted(
        event_id=original.event_id,
        leaf_hash=original.leaf_hash,
        receive_time_us=original.receive_time_us,
        leaf_index=original.leaf_index,
        replayed=True,
    )


def _fingerprint(
    secret: bytes,
    type: str,
    source: str,
    subject: str,
    occurred_text: str,
    severity: int,
    summary: str,
    details: dict[str, str],
    encoded_details: str,
) -> str:
    return fingerprint_fields(
        secret=secret,
        type=type,
        source=source,
        subject=subject,
        occurred_at=occurred_text,
        severity=_SEVERITY_LABELS[severity],
        summary=summary,
        details=details,
        encoded_details=encoded_details,
    )


def _fingerprint_candidates(primaries: list[_Candidate], *, secret: bytes) -> None:
    """Fingerprint each client event (and its later copies in the call) under its data key's
    fingerprint key, derived once per key of the batch."""
    keyed: dict[bytes, bytes] = {}
    for candidate in primaries:
        if candidate.system:
            continue
        key = candidate.key
        assert key is not None
        fingerprint_key = keyed.get(key.data_key)
        if fingerprint_key is None:
            fingerprint_key = keyed[key.data_key] = subject_fingerprint_key(
                secret=secret, data_key=key.data_key
            )
        for copy in (candidate, *(candidate.copies or ())):
            if copy is not candidate and (
                copy.system or _lookup(copy).cache_key != _lookup(candidate).cache_key
            ):
                # Another subject, type or month: other content, whatever its key would be.
                copy.fingerprint = _NO_FINGERPRINT
                continue
            copy.fingerprint = _fingerprint(
                fingerprint_key,
                copy.type,
                copy.source,
                copy.subject,
                copy.occurred_text,
                copy.severity,
                copy.summary,
                copy.details,
                copy.encoded_details,
            )


_NO_FINGERPRINT = "-"  # matches no stored fingerprint (those are 64 hex digits)


def _prepare(
    primaries: list[_Candidate],
    new: list[_Candidate],
    receive_us: int,
    *,
    secret: bytes,
    origin: SpanContext | None = None,
) -> None:
    _fingerprint_candidates(primaries, secret=secret)
    _build_rows(new, receive_us, origin=origin)


def _build_rows(candidates: list[_Candidate], receive_us: int, *, origin: SpanContext | None = None) -> None:
    receive_text = format_timestamp_us(receive_us)
    ciphers: dict[bytes, AESGCM] = {}  # one key schedule per data key in the batch
    # One read of the system's random source for the whole batch; each event gets its own slice.
    nonces = os.urandom(NONCE_BYTES * len(candidates))
    for number, candidate in enumerate(candidates):
        cipher = None
        if candidate.key is not None:
            cipher = ciphers.get(candidate.key.data_key)
            if cipher is None:
                cipher = ciphers[candidate.key.data_key] = AESGCM(candidate.key.data_key)
        candidate.row = _pending_row(
            candidate,
            receive_us=receive_us,
            receive_text=receive_text,
            cipher=cipher,
            origin=origin,
            nonce=nonces[number * NONCE_BYTES : (number + 1) * NONCE_BYTES],
        )


@dataclass(slots=True)
class _Sealed:
    """What the record stores of an event's personal fields: sealed, or a system event's payload."""

    pseudonym: str
    key_period: str
    key_id: str
    nonce: bytes
    ciphertext: bytes
    payload: str | None  # system events only: their summary and details, in clear


def _seal(candidate: _Candidate, *, cipher: AESGCM | None, nonce: bytes | None) -> _Sealed:
    if candidate.system:
        # System events carry no personal data: no key, and the fields stay readable, spelled
        # canonically, since their (version-2) leaf covers these exact characters.
        payload = system_payload_json(
            summary=candidate.summary, details=candidate.details, encoded_details=candidate.encoded_details
        )
        return _Sealed(candidate.subject, "", "", b"", b"", payload)
    key = candidate.key
    assert key is not None
    sealed = seal_personal(
        key=key.data_key,
        key_id=key.key_id,
        event_id=candidate.event_id,
        subject=candidate.subject,
        summary=candidate.summary,
        details=candidate.details if candidate.personal is None else candidate.personal,
        cipher=cipher,
        encoded_details=candidate.encoded_personal or candidate.encoded_details,
        nonce=nonce,
    )
    return _Sealed(key.pseudonym, key.key_period, key.key_id, sealed.nonce, sealed.ciphertext, None)


def _record_leaf_hash(candidate: _Candidate, sealed: _Sealed, *, receive_text: str) -> bytes:
    return leaf_hash(
        record_bytes(
            event_id=candidate.event_id,
            type=candidate.type,
            source=candidate.source,
            occurred_at=candidate.occurred_text,
            severity=_SEVERITY_LABELS[candidate.severity],
            subject_pseudonym=sealed.pseudonym,
            key_period=sealed.key_period,
            key_id=sealed.key_id,
            receive_time=receive_text,
            nonce=sealed.nonce,
            ciphertext=sealed.ciphertext,
            payload=sealed.payload,  # system events: version 2, the leaf covers their payload
            dimensions=candidate.dimensions,  # client events with dimensions: version 3
        )
    )


def _record_row(candidate: _Candidate, sealed: _Sealed, *, leaf: bytes, receive_us: int) -> tuple[Any, ...]:
    """The event_records row, in repository.RECORD_COLUMNS order."""
    return (
        candidate.event_id,
        candidate.type,
        candidate.source,
        candidate.occurred_us,
        candidate.severity,
        sealed.pseudonym,
        sealed.key_period,
        sealed.key_id,
        sealed.nonce,
        sealed.ciphertext,
        receive_us,
        candidate.fingerprint,
        leaf,
        _record_version(sealed.payload, candidate.dimensions),  # see services/ingest/domain/records.py
        sealed.payload,
        candidate.dimensions,
    )


def _record_version(payload: str | None, dimensions: str | None) -> int:
    if payload is not None:
        return 2
    return 1 if dimensions is None else 3


def _metadata_row(candidate: _Candidate, *, pseudonym: str, receive_us: int) -> tuple[Any, ...]:
    """The event_metadata row of a new event, in repository.METADATA_COLUMNS order."""
    system = candidate.system
    return (
        candidate.event_id,
        pseudonym,
        candidate.type,
        candidate.source,
        candidate.occurred_us,
        receive_us,
        candidate.severity,
        len(candidate.summary),  # summary_length
        len(candidate.details),  # detail_count
        None,  # risk_score
        0,  # risk_level
        "",  # model_version
        repository.SCORING_SKIPPED if system else repository.SCORING_PENDING,
        "system event" if system else "",
        "[]",  # violations
        0,  # violation_count
        repository.EVALUATION_SKIPPED if system else repository.EVALUATION_PENDING,
        "system event" if system else "",
        0,  # label
        "",  # label_note
        repository.TRIAGE_NEW,
        "",  # labeled_by
        None,  # label_time_us
        receive_us,  # update_time_us
        "" if candidate.key is None else candidate.key.department,
        repository.ANALYTICS_SKIPPED if system else repository.ANALYTICS_PENDING,
    )


def _enrichment_item(candidate: _Candidate, *, pseudonym: str, origin: SpanContext | None) -> EnrichmentItem:
    return EnrichmentItem(
        event_id=candidate.event_id,
        pseudonym=pseudonym,
        type=candidate.type,
        source=candidate.source,
        severity=candidate.severity,
        occurred_at_us=candidate.occurred_us,
        summary_length=len(candidate.summary),
        detail_count=len(candidate.details),
        details=candidate.details,
        origin=origin,
    )


def _pending_row(
    candidate: _Candidate,
    *,
    receive_us: int,
    receive_text: str,
    cipher: AESGCM | None = None,
    origin: SpanContext | None = None,
    nonce: bytes | None = None,
) -> PendingRow:
    sealed = _seal(candidate, cipher=cipher, nonce=nonce)
    leaf = _record_leaf_hash(candidate, sealed, receive_text=receive_text)
    return PendingRow(
        event_id=candidate.event_id,
        fingerprint=candidate.fingerprint,
        leaf_hash=leaf,
        receive_time_us=receive_us,
        record=_record_row(candidate, sealed, leaf=leaf, receive_us=receive_us),
        metadata=_metadata_row(candidate, pseudonym=sealed.pseudonym, receive_us=receive_us),
        enrichment=None
        if candidate.system
        else _enrichment_item(candidate, pseudonym=sealed.pseudonym, origin=origin),
        access=_access_rows(candidate) if candidate.system and candidate.type == AUDIT_EVENT_TYPE else (),
    )


def _access_rows(candidate: _Candidate) -> tuple[tuple[Any, ...], ...]:
    """The index rows of an access record, in repository.ACCESS_COLUMNS order: one per pseudonym
    concerned ('' when none), stored in the transaction that stores the event."""
    facts = access_facts(subject_pseudonym=candidate.subject, details=candidate.details)
    return tuple(
        (
            candidate.event_id,
            pseudonym,
            ordinal,
            facts.principal,
            facts.action,
            facts.resource,
            facts.outcome,
            candidate.source,
            candidate.occurred_us,
        )
        for ordinal, pseudonym in enumerate(facts.pseudonyms or ("",))
    )
