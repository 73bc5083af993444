"""The read side: events (decrypted while their key exists), receipts, checkpoints and proofs."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from awareness.ingest.v1 import ingest_pb2
from awareness.signing.v1 import signing_pb2
from sqlalchemy.orm import Session, sessionmaker

from services.evidence.envelope import (
    PersonalFields,
    SealedPersonal,
    is_sealed_note,
    open_note,
    open_personal,
    seal_note,
)
from services.ingest import aggregates, repository
from services.ingest.convert import (
    checkpoint_message,
    event_message,
    receipt_message,
    subject_record,
    training_example,
)
from services.ingest.domain.errors import InvalidProofRequestError
from services.ingest.domain.events import MAX_SUBJECT_CHARS, canonical_event_id
from services.ingest.domain.merkle import consistency_proof, inclusion_proof
from services.ingest.domain.records import canonical_record_bytes
from services.ingest.keys import ERASED, SubjectKey, SubjectKeys
from services.ingest.models import Checkpoint, EventRecord
from services.ingest.repository import DatabaseNodeStore, EventFilter, StoredEvent, stored_record, to_us
from services.runtime import audit, auth
from services.runtime.db import run_db, transaction
from services.runtime.errors import (
    DependencyUnavailableError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)
from services.runtime.paging import PageTokens, page_size
from services.runtime.timestamps import timestamp_to_us

PersonalDataState = ingest_pb2.Event.PersonalDataState
P = ParamSpec("P")
T = TypeVar("T")


def parse_event_name(name: str) -> str:
    event_id = canonical_event_id(name.removeprefix("events/")) if name.startswith("events/") else None
    if event_id is None:
        raise InvalidArgumentError(
            f"name must be events/{{event_id}} with a UUID event id, got {name!r}", reason="INVALID_NAME"
        )
    return event_id


def is_system_record(record: EventRecord) -> bool:
    return not record.key_id and record.system_payload is not None


READ_PERSONAL = "events:read_personal"


def may_read_personal() -> bool:
    """Whether this call's principal gets decrypted personal fields (else the pseudonymous view)."""
    principal = auth.current_principal()
    return principal is not None and principal.has(READ_PERSONAL)


class EventReader:
    def __init__(
        self,
        *,
        sessions: sessionmaker[Session],
        keys: SubjectKeys,
        gate: repository.WriteGate,
        page_tokens: PageTokens,
        on_forget: Callable[[str], object] = lambda pseudonym: None,
        record_forget: Callable[[str], object] = lambda pseudonym: None,
        forget_downstream: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._sessions = sessions
        self._tokens = page_tokens
        self._keys = keys
        self._gate = gate
        self._on_forget = on_forget
        self._record_forget = record_forget  # for the other replicas, which poll the database
        self._forget_downstream = forget_downstream  # analytics; a failure fails the call, gdpr retries

    async def _read(
        self, query: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """One repository read in its own session, off the event loop."""
        return await run_db(_in_session, self._sessions, lambda session: query(session, *args, **kwargs))

    async def _write(
        self, change: Callable[Concatenate[Session, P], T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """One repository change in its own transaction, behind the write gate, off the event loop."""
        return await run_db(
            _in_transaction, self._sessions, self._gate, lambda session: change(session, *args, **kwargs)
        )

    # --- events ---------------------------------------------------------------------------------

    async def get_event(self, name: str) -> ingest_pb2.Event:
        personal = _audited_read()
        event_id = parse_event_name(name)
        events, opened = await self._load([event_id], personal=personal)
        if not events:
            raise NotFoundError(f"event {event_id} not found", reason="EVENT_NOT_FOUND")
        _note_read(opened)
        return events[0]

    async def list_events(self, request: ingest_pb2.ListEventsRequest) -> ingest_pb2.ListEventsResponse:
        basic = request.view == ingest_pb2.EVENT_VIEW_BASIC
        if basic:
            personal = False
            if not request.subject:
                audit.skip()  # a pseudonymous list decrypts nobody's data
        else:
            personal = _audited_read()
        size = page_size(request.page_size)
        start_us = timestamp_to_us(request.start_time) if request.HasField("start_time") else None
        end_us = timestamp_to_us(request.end_time) if request.HasField("end_time") else None
        pseudonym = request.subject_pseudonym
        if request.subject:
            # Resolving an identifier to its pseudonym re-identifies the pseudonymous view.
            auth.require_permission(READ_PERSONAL)
            found = await self._subject_pseudonym(request.subject)
            if found is None or (pseudonym and pseudonym != found):
                # Nobody by that identifier (unknown or erased), or another person than the pseudonym
                # filter names: nothing matches, and gdpr registered no one.
                _note_read([])
                return ingest_pb2.ListEventsResponse()
            pseudonym = found
        where = EventFilter(
            type=request.type,
            source=request.source,
            subject_pseudonym=pseudonym,
            start_us=start_us,
            end_us=end_us,
            min_risk_score=request.min_risk_score if request.HasField("min_risk_score") else None,
            min_risk_level=int(request.min_risk_level),
            label=int(request.label),
            triage_state=int(request.triage_state),
        )
        # Bound to the resolved pseudonym (never the identifier: tokens travel in URLs), and to
        # whether it came from `subject`, so a token of one filter is refused by any other.
        by_risk = _order_by_risk(request.order_by)
        scope = where.fingerprint() + (":subject" if request.subject else "") + (":risk" if by_risk else "")
        if by_risk:
            after = self._tokens.decode(
                request.page_token, method="ingest.ListEvents", filters=scope, shape=(float, int, str)
            )
            event_ids = await self._read(
                repository.list_riskiest_event_ids, where=where, after=after, limit=size + 1
            )
        else:
            after = self._tokens.decode(
                request.page_token, method="ingest.ListEvents", filters=scope, shape=(int, str)
            )
            event_ids = await self._read(repository.list_event_ids, where=where, after=after, limit=size + 1)
        more = len(event_ids) > size
        events, opened = await self._load(event_ids[:size], personal=personal)
        if basic and request.subject:
            # Resolving an identifier re-identifies the person even when nothing is decrypted.
            audit.note(resource="events", pseudonyms=[pseudonym], details={"subject_lookup": "true"})
        else:
            _note_read(opened, resource="events")
        response = ingest_pb2.ListEventsResponse(events=events)
        if more and events:
            last = events[-1]
            position: list[Any] = [timestamp_to_us(last.receive_time), last.event_id]
            if by_risk:
                position.insert(0, float(last.metadata.risk_score))
            response.next_page_token = self._tokens.encode(
                position, method="ingest.ListEvents", filters=scope
            )
        return response

    async def _subject_pseudonym(self, subject: str) -> str | None:
        """The pseudonym gdpr holds for an identifier, None for nobody; gdpr creates nothing."""
        if not subject.strip() or len(subject) > MAX_SUBJECT_CHARS:
            raise InvalidArgumentError(
                f"subject must name a data subject (1 to {MAX_SUBJECT_CHARS} characters)",
                reason="INVALID_SUBJECT_FILTER",
                violations=[FieldViolation("subject", f"must be 1 to {MAX_SUBJECT_CHARS} characters")],
            )
        try:
            return await self._keys.lookup_pseudonym(subject)
        except DependencyUnavailableError as error:
            raise DependencyUnavailableError(
                "cannot filter by subject: the gdpr service, which resolves identifiers to pseudonyms, "
                "is unavailable; retry later, or filter by subject_pseudonym",
                reason=error.reason,
                metadata=error.metadata,
            ) from error

    async def label_event(
        self, request: ingest_pb2.LabelEventRequest, *, labeled_by: str
    ) -> ingest_pb2.Event:
        # What was set, by enum name; never the note, which is personal data.
        audit.note(
            details={
                key: value
                for key, value in (
                    ("label", _enum_name(ingest_pb2.Label, request.label)),
                    ("triage_state", _enum_name(ingest_pb2.TriageState, request.triage_state)),
                )
                if value
            }
        )
        event_id = parse_event_name(request.name)
        if not request.label and not request.triage_state:
            raise InvalidArgumentError(
                "set label and/or triage_state",
                reason="NOTHING_TO_LABEL",
            )

        note = await self._seal_note(event_id, request.note) if request.label and request.note else ""
        labeled = await self._write(
            repository.label_event,
            event_id=event_id,
            label=int(request.label),
            note=note,
            triage_state=int(request.triage_state),
            labeled_by=labeled_by,
            now_us=to_us(_now()),
        )
        if not labeled:
            raise NotFoundError(f"event {event_id} not found", reason="EVENT_NOT_FOUND")
        # The labelled event as its labeller may read it; the label's record is the record of this.
        events, _ = await self._load([event_id], personal=may_read_personal())
        if not events:
            raise NotFoundError(f"event {event_id} not found", reason="EVENT_NOT_FOUND")
        audit.note(pseudonyms=[events[0].subject_pseudonym])
        return events[0]

    async def _seal_note(self, event_id: str, note: str) -> str:
        """The note sealed under the event's data key: notes about a person are personal data."""
        record = await self._read(repository.record_by_event, event_id=event_id)
        if record is None:
            raise NotFoundError(f"event {event_id} not found", reason="EVENT_NOT_FOUND")
        audit.note(pseudonyms=[record.subject_pseudonym])  # also on the refusals below
        if is_system_record(record):
            raise InvalidArgumentError(
                "system events carry no personal data and take no note",
                reason="NOTE_NOT_ALLOWED",
                violations=[FieldViolation("note", "must be empty for system events")],
            )
        keys = await self._keys.unwrap([(record.subject_pseudonym, record.key_period)])
        key = keys.get((record.subject_pseudonym, record.key_period))
        if not isinstance(key, SubjectKey):
            raise FailedPreconditionError(
                "the event's personal data was erased; a note about it cannot be kept",
                reason="PERSONAL_DATA_ERASED",
            )
        return seal_note(key=key.data_key, key_id=record.key_id, event_id=event_id, note=note)

    async def _load(
        self, event_ids: Sequence[str], *, personal: bool
    ) -> tuple[list[ingest_pb2.Event], list[str]]:
        """The events, in the order asked, and the pseudonym of each one whose personal fields were
        decrypted (for the call's access record)."""
        stored = await self._read(repository.events_with_checkpoints, event_ids=event_ids)
        ordered = [stored[event_id][0] for event_id in event_ids if event_id in stored]
        opened = await self._open([event.record for event in ordered], personal=personal)
        messages = []
        decrypted = []
        for event in ordered:
            fields, state, key = opened[event.record.event_id]
            if key is not None:
                decrypted.append(event.record.subject_pseudonym)
            message = event_message(
                record=event.record,
                metadata=event.metadata,
                receipt=stored_receipt(*stored[event.record.event_id]),
                personal=fields,
                state=state,
            )
            message.metadata.label_note = _note(event, key, state)
            messages.append(message)
        return messages, decrypted

    async def _open(
        self, records: Sequence[EventRecord], *, personal: bool = True
    ) -> dict[str, tuple[PersonalFields | None, int, SubjectKey | None]]:
        """Decrypted personal fields, their state and the key that opened them, per event id.

        Without `personal` (a caller lacking events:read_personal) nothing is decrypted and gdpr is
        not asked: the pseudonymous view.
        """
        result: dict[str, tuple[PersonalFields | None, int, SubjectKey | None]] = {}
        sealed = [record for record in records if not is_system_record(record)]
        for record in records:
            if is_system_record(record):
                payload = json.loads(record.system_payload or "{}")
                result[record.event_id] = (
                    PersonalFields(
                        subject="", summary=payload.get("summary", ""), details=payload.get("details", {})
                    ),
                    PersonalDataState.PERSONAL_DATA_STATE_AVAILABLE,
                    None,
                )
        if not sealed:
            return result
        if not personal:
            for record in sealed:
                result[record.event_id] = (None, PersonalDataState.PERSONAL_DATA_STATE_WITHHELD, None)
            return result
        try:
            keys = await self._keys.unwrap([(r.subject_pseudonym, r.key_period) for r in sealed])
        except (DependencyUnavailableError, FailedPreconditionError):
            for record in sealed:
                result[record.event_id] = (None, PersonalDataState.PERSONAL_DATA_STATE_UNAVAILABLE, None)
            return result
        for record in sealed:
            key = keys.get((record.subject_pseudonym, record.key_period))
            if isinstance(key, SubjectKey):
                fields = open_personal(
                    key=key.data_key,
                    key_id=record.key_id,
                    event_id=record.event_id,
                    sealed=SealedPersonal(nonce=bytes(record.nonce), ciphertext=bytes(record.ciphertext)),
                )
                result[record.event_id] = (fields, PersonalDataState.PERSONAL_DATA_STATE_AVAILABLE, key)
            elif key == ERASED:
                result[record.event_id] = (None, PersonalDataState.PERSONAL_DATA_STATE_ERASED, None)
            else:
                result[record.event_id] = (None, PersonalDataState.PERSONAL_DATA_STATE_UNAVAILABLE, None)
        return result

    # --- receipts, checkpoints, proofs ----------------------------------------------------------

    async def get_receipt(self, name: str) -> ingest_pb2.Receipt:
        return await load_receipt(self._sessions, parse_event_name(name))

    async def get_checkpoint(self, tree_size: int | None) -> signing_pb2.SignedCheckpoint:
        found = await self._read(repository.checkpoint, tree_size=tree_size)
        if found is None:
            what = "no checkpoint yet" if tree_size is None else f"no checkpoint of tree size {tree_size}"
            raise NotFoundError(what, reason="CHECKPOINT_NOT_FOUND")
        return checkpoint_message(found)

    async def list_checkpoints(
        self, request: ingest_pb2.ListCheckpointsRequest
    ) -> ingest_pb2.ListCheckpointsResponse:
        size = page_size(request.page_size)
        cursor = self._tokens.decode(request.page_token, method="ingest.ListCheckpoints", shape=(int,))
        below = cursor[0] if cursor else None
        rows = await self._read(repository.list_checkpoints, below_size=below, limit=size + 1)
        found = [checkpoint_message(row) for row in rows]
        response = ingest_pb2.ListCheckpointsResponse(checkpoints=found[:size])
        if len(found) > size:
            response.next_page_token = self._tokens.encode(
                [found[size - 1].tree_size], method="ingest.ListCheckpoints"
            )
        return response

    async def inclusion(
        self, request: ingest_pb2.GetInclusionProofRequest
    ) -> ingest_pb2.GetInclusionProofResponse:
        which = request.WhichOneof("leaf")
        if which is None:
            raise InvalidArgumentError("set event_id or leaf_index", reason="LEAF_REQUIRED")
        event_id = canonical_event_id(request.event_id) if which == "event_id" else None
        if which == "event_id" and event_id is None:
            raise InvalidArgumentError("event_id must be a UUID", reason="INVALID_EVENT_ID")
        return await self._read(_inclusion_answer, request, event_id=event_id)

    async def consistency(
        self, request: ingest_pb2.GetConsistencyProofRequest
    ) -> ingest_pb2.GetConsistencyProofResponse:
        if request.first_tree_size <= 0:
            raise InvalidProofRequestError("first_tree_size must be positive")
        return await self._read(_consistency_answer, request)

    # --- internal: gdpr and scoring -------------------------------------------------------------

    async def subject_records(
        self, request: ingest_pb2.ListSubjectRecordsRequest
    ) -> ingest_pb2.ListSubjectRecordsResponse:
        if not request.pseudonym:
            raise InvalidArgumentError("pseudonym is required", reason="PSEUDONYM_REQUIRED")
        size = page_size(request.page_size)
        scope = "subject:" + hashlib.sha256(request.pseudonym.encode()).hexdigest()[:16]
        cursor = self._tokens.decode(
            request.page_token, method="ingest.ListSubjectRecords", filters=scope, shape=(int,)
        )
        after = cursor[0] if cursor else 0
        rows = await self._read(
            repository.subject_records, pseudonym=request.pseudonym, after_seq=after, limit=size + 1
        )
        response = ingest_pb2.ListSubjectRecordsResponse(
            records=[
                subject_record(record, metadata, leaf_index) for record, metadata, leaf_index in rows[:size]
            ]
        )
        if len(rows) > size:
            response.next_page_token = self._tokens.encode(
                [rows[size - 1][0].seq], method="ingest.ListSubjectRecords", filters=scope
            )
        return response

    async def forget_subject(self, pseudonym: str) -> ingest_pb2.ForgetSubjectResponse:
        if not pseudonym:
            raise InvalidArgumentError("pseudonym is required", reason="PSEUDONYM_REQUIRED")
        self._keys.forget(pseudonym)
        self._on_forget(pseudonym)  # events still waiting for enrichment
        await run_db(self._record_forget, pseudonym)
        event_count = await self._write(repository.forget_subject, pseudonym=pseudonym)
        if self._forget_downstream is not None:
            await self._forget_downstream(pseudonym)
        return ingest_pb2.ForgetSubjectResponse(event_count=event_count)

    async def training_examples(
        self, request: ingest_pb2.ListTrainingExamplesRequest
    ) -> ingest_pb2.ListTrainingExamplesResponse:
        size = page_size(request.page_size, default=500, maximum=5000)
        start_us = timestamp_to_us(request.start_time) if request.HasField("start_time") else None
        end_us = timestamp_to_us(request.end_time) if request.HasField("end_time") else None
        scope = f"training:{start_us}:{end_us}"
        after = self._tokens.decode(
            request.page_token, method="ingest.ListTrainingExamples", filters=scope, shape=(int, str)
        )

        rows, history = await self._read(
            aggregates.labelled_with_histories, start_us=start_us, end_us=end_us, after=after, limit=size + 1
        )
        page = rows[:size]
        examples = [training_example(metadata, history[metadata.event_id]) for metadata in page]
        cursor_out: list[int | str] | None = None
        if len(rows) > size:
            cursor_out = [page[-1].occurred_at_us, page[-1].event_id]
        response = ingest_pb2.ListTrainingExamplesResponse(examples=examples)
        if cursor_out is not None:
            response.next_page_token = self._tokens.encode(
                cursor_out, method="ingest.ListTrainingExamples", filters=scope
            )
        return response


ORDERS: Final = {"": False, "receive_time desc": False, "risk_score desc": True}


def _order_by_risk(order_by: str) -> bool:
    """Whether ``order_by`` asks for the riskiest first; anything but the two orders is refused."""
    normalized = " ".join(order_by.split()).lower()
    if normalized not in ORDERS:
        raise InvalidArgumentError(
            f"cannot order by {order_by!r}",
            reason="INVALID_ORDER_BY",
            violations=[FieldViolation("order_by", "receive_time desc or risk_score desc")],
        )
    return ORDERS[normalized]


def _audited_read() -> bool:
    """Whether this read may decrypt personal data; if not, it is not recorded. Decided first, so
    that no refusal of a pseudonymous read (which reads nobody's data) is recorded either."""
    personal = may_read_personal()
    if not personal:
        audit.skip()
    return personal


def _note_read(pseudonyms: Sequence[str], *, resource: str | None = None) -> None:
    """The access record of a read: the subjects whose personal fields it decrypted, and how many
    events; a read that decrypted nothing (erased, withheld, only system events) is not recorded."""
    if not pseudonyms:
        audit.skip()
        return
    audit.note(resource=resource, pseudonyms=pseudonyms, details={"events": str(len(pseudonyms))})


def _enum_name(enum: Any, number: int) -> str:
    """The enum value's name ("LABEL_TRUE_POSITIVE"), its number for one this build does not know,
    "" for unset."""
    if not number:
        return ""
    try:
        return str(enum.Name(number))
    except ValueError:
        return str(number)


def _note(event: StoredEvent, key: SubjectKey | None, state: int) -> str:
    """The label note as the caller may read it: opened with the event's key, else empty."""
    stored = event.metadata.label_note
    if not stored or state != PersonalDataState.PERSONAL_DATA_STATE_AVAILABLE:
        return ""
    if not is_sealed_note(stored):
        # Written before notes were sealed: shown to readers of personal data while the key lives.
        return stored if key is not None else ""
    if key is None:
        return ""
    return open_note(
        key=key.data_key, key_id=event.record.key_id, event_id=event.record.event_id, stored=stored
    )


def stored_receipt(event: StoredEvent, checkpoint: Checkpoint | None) -> ingest_pb2.Receipt:
    """The receipt of a stored event, with the first checkpoint covering it once there is one."""
    return receipt_message(
        event_id=event.record.event_id,
        leaf_hash=bytes(event.record.leaf_hash),
        receive_time_us=event.record.receive_time_us,
        leaf_index=event.leaf_index,
        checkpoint=checkpoint,
    )


async def load_receipt(sessions: sessionmaker[Session], event_id: str) -> ingest_pb2.Receipt:
    """GetReceipt's answer, also for AppendEvent replaying an integrated event."""
    found = await run_db(
        _in_session, sessions, functools.partial(repository.events_with_checkpoints, event_ids=[event_id])
    )
    if event_id not in found:
        raise NotFoundError(f"event {event_id} not found", reason="EVENT_NOT_FOUND")
    return stored_receipt(*found[event_id])


def _in_session(sessions: sessionmaker[Session], query: Callable[[Session], T]) -> T:
    with sessions() as session:
        return query(session)


def _in_transaction(
    sessions: sessionmaker[Session], gate: repository.WriteGate, change: Callable[[Session], T]
) -> T:
    with gate, transaction(sessions) as session:
        return change(session)


def _inclusion_answer(
    session: Session, request: ingest_pb2.GetInclusionProofRequest, *, event_id: str | None
) -> ingest_pb2.GetInclusionProofResponse:
    """The proof of one leaf (named by event id, else by index) in a tree size the log has."""
    if event_id is not None:
        leaf = repository.leaf_by_event(session, event_id=event_id)
        if leaf is None:
            if repository.record_by_event(session, event_id=event_id) is None:
                raise NotFoundError(f"event {event_id} not found", reason="EVENT_NOT_FOUND")
            raise FailedPreconditionError(
                f"event {event_id} is not integrated into the tree yet; retry shortly",
                reason="NOT_YET_INTEGRATED",
            )
    else:
        leaf = repository.leaf_by_index(session, leaf_index=request.leaf_index)
        if leaf is None:
            raise NotFoundError(f"no leaf {request.leaf_index}", reason="LEAF_NOT_FOUND")
    size = _resolve_size(session, request.tree_size)
    if leaf.leaf_index >= size and not request.tree_size:
        # In the tree, not yet under a signed checkpoint (the default size): wait, do not fix the request.
        raise FailedPreconditionError(
            f"leaf {leaf.leaf_index} is not under the latest checkpoint (size {size}) yet; retry shortly",
            reason="NOT_YET_CHECKPOINTED",
        )
    if leaf.leaf_index >= size:
        raise InvalidProofRequestError(f"leaf {leaf.leaf_index} is not in the tree of size {size}")
    hashes = inclusion_proof(leaf_index=leaf.leaf_index, tree_size=size, store=DatabaseNodeStore(session))
    record = repository.record_by_event(session, event_id=leaf.event_id)
    assert record is not None
    response = ingest_pb2.GetInclusionProofResponse(
        leaf_index=leaf.leaf_index,
        tree_size=size,
        leaf_hash=bytes(leaf.leaf_hash),
        hashes=hashes,
        leaf_data=canonical_record_bytes(stored_record(record)),
    )
    checkpoint = repository.checkpoint_of_size(session, tree_size=size)
    if checkpoint is not None:
        response.checkpoint.CopyFrom(checkpoint_message(checkpoint))
    return response


def _consistency_answer(
    session: Session, request: ingest_pb2.GetConsistencyProofRequest
) -> ingest_pb2.GetConsistencyProofResponse:
    """The proof that the first tree size is a prefix of the second (0: the latest checkpoint's)."""
    second = _resolve_size(session, request.second_tree_size)
    if request.first_tree_size > second:
        raise InvalidProofRequestError(
            f"first_tree_size {request.first_tree_size} exceeds second_tree_size {second}"
        )
    store = DatabaseNodeStore(session)
    response = ingest_pb2.GetConsistencyProofResponse(
        first_tree_size=request.first_tree_size,
        second_tree_size=second,
        hashes=consistency_proof(old_size=request.first_tree_size, new_size=second, store=store),
    )
    for size, target in (
        (request.first_tree_size, response.first_checkpoint),
        (second, response.second_checkpoint),
    ):
        checkpoint = repository.checkpoint_of_size(session, tree_size=size)
        if checkpoint is not None:
            target.CopyFrom(checkpoint_message(checkpoint))
    return response


def _resolve_size(session: Session, requested: int) -> int:
    """A requested tree size, or the latest checkpoint's for 0; never beyond the integrated tree."""
    if requested < 0:
        raise InvalidProofRequestError(f"tree size must not be negative, got {requested}")
    if requested == 0:
        latest = repository.latest_checkpoint(session)
        if latest is None:
            raise FailedPreconditionError(
                "no signed checkpoint yet; name a tree size explicitly", reason="NO_CHECKPOINT"
            )
        return latest.tree_size
    current = repository.tree_size(session)
    if requested > current:
        raise InvalidProofRequestError(f"tree size {requested} exceeds the integrated tree size {current}")
    return requested


def _now() -> datetime:
    return datetime.now(UTC)
