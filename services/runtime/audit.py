"""Access records: who read personal data or changed state, kept as system events in the event log.

Every method whose proto declares ``audit_action`` is recorded by the server interceptor after it
runs: the principal, the action, the resource, the pseudonyms of the subjects concerned and the
outcome. A handler adds what only it knows with :func:`note` (the pseudonym it resolved, the label
it set) or says with :func:`skip` that the call did nothing worth recording (a read that decrypted
nothing). The records hold no personal data: handlers note pseudonyms, never identifiers, summaries
or notes.

The :class:`AuditRecorder` turns records into ``audit.action`` events and appends them in batches
off the request path, so a read pays for a queue insert, not for a log append. Ingest appends its
own records through its writer; every other service sends them to ingest's AppendEvents with its
own certificate. Records wait in memory (bounded) while ingest is unreachable and are retried with
the same event ids, so a retry after an ambiguous failure never duplicates one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc

from services.runtime.metrics import ServiceMetrics
from services.runtime.timestamps import to_timestamp

log = logging.getLogger("awareness.audit")

AUDIT_EVENT_TYPE = "audit.action"
# Ingest's details limit is 16 KiB; pseudonyms are about 30 characters, so a record of a large
# read is split into parts of at most this many subjects.
PSEUDONYMS_PER_RECORD = 256
# Detail keys the record itself uses; a handler's notes may not overwrite them.
RESERVED_DETAILS = frozenset({"principal", "action", "method", "resource", "outcome", "pseudonyms", "part"})

Sink = Callable[[Sequence[ingest_pb2.Event]], Awaitable[None]]


class RejectedRecordsError(Exception):
    """Ingest refused some records for good (they are dropped, not retried)."""

    def __init__(self, refused: int, reason: str) -> None:
        super().__init__(f"{refused} access records refused: {reason}")
        self.refused = refused


@dataclass
class AuditNotes:
    """What a handler adds to the record of the call it serves."""

    resource: str = ""
    pseudonyms: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    skipped: bool = False


_notes: ContextVar[AuditNotes | None] = ContextVar("awareness_audit_notes", default=None)


def begin() -> Token[AuditNotes | None]:
    """Open the notes of one call (the interceptor does this around an audited handler)."""
    return _notes.set(AuditNotes())


def end(token: Token[AuditNotes | None]) -> AuditNotes:
    notes = _notes.get() or AuditNotes()
    _notes.reset(token)
    return notes


def note(
    *, resource: str | None = None, pseudonyms: Iterable[str] = (), details: Mapping[str, str] | None = None
) -> None:
    """Add to the record of the call being served: its resource, subjects' pseudonyms, facts.

    Never pass personal data: identifiers, summaries and notes stay out of the log in clear.
    Outside an audited call this does nothing.
    """
    notes = _notes.get()
    if notes is None:
        return
    if resource is not None:
        notes.resource = resource
    for pseudonym in pseudonyms:
        if pseudonym and pseudonym not in notes.pseudonyms:
            notes.pseudonyms.append(pseudonym)
    for key, value in (details or {}).items():
        if key not in RESERVED_DETAILS:
            notes.details[key] = value


def skip() -> None:
    """The call touched nothing the record is for (e.g. a read that decrypted no personal data)."""
    notes = _notes.get()
    if notes is not None:
        notes.skipped = True


@dataclass(frozen=True, slots=True)
class AccessRecord:
    principal: str
    action: str
    method: str
    resource: str
    outcome: str
    time: datetime
    pseudonyms: tuple[str, ...] = ()
    details: Mapping[str, str] = field(default_factory=dict)


def resource_of(request: Any) -> str:
    """The resource a request names by AIP convention: its ``name``, else its ``parent``."""
    for attribute in ("name", "parent"):
        value = getattr(request, attribute, "")
        if isinstance(value, str) and value:
            return value
    return ""


# A resource name as the services mint them (``policies/p-1``, ``events/<uuid>``). What a refused
# caller typed is kept only in this shape: anything else could be an e-mail address or a phone number.
_MINTED_NAME = re.compile(r"[a-z][A-Za-z]{0,40}/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def refused_resource(name: str) -> str:
    """``name`` when it has the shape of a minted resource name and its id is not all digits (a phone
    number); else its collection alone (``policies``), or nothing."""
    if _MINTED_NAME.fullmatch(name) and not re.fullmatch(r"[\d.-]+", name.partition("/")[2]):
        return name
    collection = name.partition("/")[0]
    return collection if re.fullmatch(r"[a-z][A-Za-z]{0,40}", collection) else ""


def audit_events(record: AccessRecord, *, source: str) -> list[ingest_pb2.Event]:
    """The log events of one record: one, or one per part when many subjects are concerned."""
    chunks = [
        record.pseudonyms[start : start + PSEUDONYMS_PER_RECORD]
        for start in range(0, len(record.pseudonyms), PSEUDONYMS_PER_RECORD)
    ] or [()]
    events = []
    for position, chunk in enumerate(chunks, start=1):
        details = {
            **record.details,
            "principal": record.principal,
            "action": record.action,
            "method": record.method,
            "resource": record.resource,
            "outcome": record.outcome,
        }
        if len(chunk) > 1:
            details["pseudonyms"] = ",".join(chunk)
        if len(chunks) > 1:
            details["part"] = f"{position}/{len(chunks)}"
        events.append(
            ingest_pb2.Event(
                event_id=str(uuid.uuid4()),
                type=AUDIT_EVENT_TYPE,
                source=source,
                subject_pseudonym=chunk[0] if len(chunk) == 1 else "",
                occurred_at=to_timestamp(record.time),
                severity=ingest_pb2.SEVERITY_INFO,
                details={key: value for key, value in details.items() if value},
            )
        )
    return events


def ingest_sink(channel: Callable[[], Any]) -> Sink:
    """Append records through ingest's AppendEvents on ``channel()`` (a guarded channel to ingest)."""

    async def append(events: Sequence[ingest_pb2.Event]) -> None:
        stub = ingest_pb2_grpc.IngestServiceStub(channel())
        response = await stub.AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        refused = [result for result in response.results if result.HasField("error")]
        if refused:
            raise RejectedRecordsError(len(refused), refused[0].error.message)

    return append


class AuditRecorder:
    """Batches access records into log appends, off the request path."""

    def __init__(
        self,
        *,
        source: str,
        sink: Sink | None,
        metrics: ServiceMetrics | None = None,
        batch_size: int = 200,
        flush_seconds: float = 0.2,
        capacity: int = 20_000,
        retry_seconds: float = 1.0,
        max_retry_seconds: float = 30.0,
    ) -> None:
        self.source = source
        self.sink = sink
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._capacity = capacity
        self._retry_seconds = retry_seconds
        self._max_retry_seconds = max_retry_seconds
        self._queue: deque[ingest_pb2.Event] = deque()
        self._wake = asyncio.Event()
        self._written: Any = None
        self._dropped: Any = None
        self._pending: Any = None
        if metrics is not None:
            records = metrics.counter(
                "audit_records_total", "Access records by fate (written to the log, or dropped)", ["fate"]
            )
            self._written = records.labels("written")
            self._dropped = records.labels("dropped")
            self._pending = metrics.gauge("audit_records_pending", "Access records waiting to be appended")

    @property
    def pending(self) -> int:
        return len(self._queue)

    def record(self, record: AccessRecord) -> None:
        """Queue one record; never blocks. A full queue drops the record and counts it."""
        if self.sink is None:
            return
        events = audit_events(record, source=self.source)
        room = self._capacity - len(self._queue)
        if room < len(events):
            self._count(self._dropped, len(events))
            log.error("access record dropped: queue full", extra={"action": record.action})
            return
        self._queue.extend(events)
        self._gauge()
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def run(self) -> None:
        """Append queued records until cancelled (a background task of the service)."""
        delay = self._retry_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._flush_seconds)
            self._wake.clear()
            try:
                await self.flush()
                delay = self._retry_seconds
            except asyncio.CancelledError:
                raise
            except Exception as error:  # ingest unreachable: keep the records, try again later
                log.warning(
                    "access records not appended yet",
                    extra={
                        "pending": len(self._queue),
                        "error": type(error).__name__,
                        "retry_seconds": delay,
                    },
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_seconds)

    async def flush(self) -> None:
        """Append everything queued now, batch by batch; a failed batch stays at the front."""
        while self._queue and self.sink is not None:
            batch = [self._queue[index] for index in range(min(self._batch_size, len(self._queue)))]
            try:
                await self.sink(batch)
            except RejectedRecordsError as error:
                # Invalid for good (a bug, not an outage): retrying would block every later record.
                self._count(self._dropped, error.refused)
                self._count(self._written, len(batch) - error.refused)
                log.error("access records refused by the log", extra={"error": str(error)})
            else:
                self._count(self._written, len(batch))
            for _ in batch:
                self._queue.popleft()
            self._gauge()

    async def drain(self, timeout_seconds: float) -> None:
        """On shutdown: append what is queued, within the grace period; say what was lost."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), timeout=timeout_seconds)
        if self._queue:
            self._count(self._dropped, len(self._queue))
            log.error("access records lost at shutdown", extra={"lost": len(self._queue)})
            self._queue.clear()
            self._gauge()

    def _gauge(self) -> None:
        if self._pending is not None:
            self._pending.set(len(self._queue))

    @staticmethod
    def _count(counter: Any, amount: int) -> None:
        if counter is not None and amount > 0:
            counter.inc(amount)


def now() -> datetime:
    return datetime.now(UTC)


class RecordNotWrittenError(Exception):
    """An access record a command line appended did not reach the event log; the message says why."""


async def append_from_cli(
    events: list[ingest_pb2.Event],
    *,
    service: str,
    attempts: int = 3,
    timeout_seconds: float = 10.0,
    retry_seconds: float = 0.5,
) -> list[str]:
    """Append a command's own access records to the log as ``service``, with its certificate; the
    event ids stored. Retries only an unavailable or late ingest: the same event ids again, which
    ingest appends once, so a retry after a lost answer cannot duplicate a record."""
    import grpc

    from services.runtime.auth import Principal
    from services.runtime.clients import call_from_cli
    from services.runtime.config import load_settings

    settings = load_settings(service)
    for attempt in range(1, attempts + 1):
        try:
            response = await call_from_cli(
                settings,
                service="ingest",
                stub_class=ingest_pb2_grpc.IngestServiceStub,
                method="AppendEvents",
                request=ingest_pb2.AppendEventsRequest(events=events),
                identity=Principal.for_service(service),
                timeout_seconds=timeout_seconds,
                attempts=1,
            )
        except grpc.aio.AioRpcError as exc:
            transient = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
            if not transient or attempt == attempts:
                late = exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                maybe = " (it may be in the log all the same)" if late else ""
                raise RecordNotWrittenError(
                    f"ingest answered {exc.code().name}: {exc.details()}{maybe}"
                ) from exc
            await asyncio.sleep(retry_seconds * attempt)
            continue
        refused = [result.error.message for result in response.results if result.HasField("error")]
        if refused:
            raise RecordNotWrittenError(f"ingest refused it: {refused[0]}")
        return [result.receipt.event_id for result in response.results]
    raise RecordNotWrittenError("no attempt was made")
