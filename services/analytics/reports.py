"""Weekly reports as evidence: build one from the rollups, render it, time-stamp and log its digest.

Issuing a report (``ReportIssuer.issue``):

1. build the :class:`WeeklyReport` of one ISO week from the service's own reads (funnels of the
   campaigns active that week, the trend over it and the four weeks before, departments, training,
   violations, the riskiest pseudonyms) and the log's state from ingest (its latest signed
   checkpoint, whose signature is checked against signing's published keys);
2. render it (``services.analytics.rendering``) and take the SHA-256 of the bytes;
3. ask signing's TSA for an RFC 3161 token over that digest;
4. append a ``report.issued`` system event to ingest with the digest, the token's SHA-256 and time
   (a version-2 record: the leaf covers these details, so the log covers the digest);
5. keep the bytes, the token and the event id in the ``reports`` table.

``evidence`` gathers what an auditor needs to check a copy offline (``awareness verify --report
FILE --evidence FILE.evidence.json``): the token, and the event's inclusion proof in a signed
checkpoint with its leaf data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Protocol

from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from awareness.scoring.v1 import scoring_pb2, scoring_pb2_grpc
from awareness.signing.v1 import signing_pb2, signing_pb2_grpc
from google.protobuf import json_format
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.analytics import rendering, report_store
from services.analytics.domain.facts import day_of_date
from services.analytics.domain.funnel import Funnel, Stage
from services.analytics.domain.report import (
    DepartmentRow,
    FunnelRow,
    LiveQualityRow,
    LogState,
    ModelHealth,
    RiskRow,
    TrainingRow,
    ViolationRow,
    WeeklyRate,
    WeeklyReport,
    iso_week,
    parse_iso_week,
)
from services.analytics.domain.training import TrainingSummary
from services.analytics.report_models import ReportRow
from services.analytics.service import AnalyticsOperations, SubjectRiskNotFoundError
from services.evidence.checkpoint import NoteVerifier, verify_checkpoint
from services.evidence.errors import NoteError
from services.evidence.timestamp import granted_token, timestamp_request
from services.runtime.clients import call_peer
from services.runtime.db import run_db, transaction
from services.runtime.errors import (
    AlreadyExistsError,
    AwarenessError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
)
from services.runtime.timestamps import from_timestamp, to_timestamp

log = logging.getLogger("awareness.analytics.reports")

# services/ingest/domain/report_records.py registers the type and checks these details.
REPORT_EVENT_TYPE: Final = "report.issued"
REPORT_EVENT_SOURCE: Final = "analytics"
REPORT_EVENT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://awareness.dev/analytics/report")
TREND_WEEKS: Final = 5  # the report's week and the four before
RISKIEST: Final = 10
MAX_CAMPAIGNS: Final = 10_000
_SENT, _CLICKED, _REPORTED = "phishing.email_sent", "phishing.clicked", "phishing.reported"
_SEVERITY_NAMES: Final = {1: "INFO", 2: "LOW", 3: "MEDIUM", 4: "HIGH", 5: "CRITICAL"}
DRIFT_WINDOW: Final = "24h"


class ReportNotFoundError(NotFoundError):
    reason = "REPORT_NOT_FOUND"


class IngestStub(Protocol):
    def __call__(self) -> ingest_pb2_grpc.IngestServiceStub: ...


class SigningStub(Protocol):
    def __call__(self) -> signing_pb2_grpc.SigningServiceStub: ...


def report_event_id(report_id: str) -> str:
    """The report's log event id: deterministic, so a retried append is recognised, not doubled."""
    return str(uuid.uuid5(REPORT_EVENT_NAMESPACE, report_id))


def last_complete_week(now: datetime) -> str:
    """The ISO week before the one ``now`` falls in (UTC)."""
    today = now.astimezone(UTC).date()
    return iso_week(today - timedelta(days=today.isoweekday()))


def check_request(*, period: str, fmt: str) -> list[FieldViolation]:
    """Field violations of a CreateReport request (empty period: the last complete week)."""
    violations = []
    if period:
        try:
            parse_iso_week(period)
        except ValueError as error:
            violations.append(FieldViolation("period", f"must be an ISO week such as 2026-W48: {error}"))
    if fmt not in rendering.REPORT_FORMATS:
        violations.append(FieldViolation("format", f"must be one of {', '.join(rendering.REPORT_FORMATS)}"))
    return violations


def name_of(report_id: str) -> str:
    return f"reports/{report_id}"


def report_id_of(name: str, *, field: str = "name") -> str:
    prefix, _, report_id = name.partition("/")
    try:
        valid = prefix == "reports" and str(uuid.UUID(report_id)) == report_id
    except ValueError:
        valid = False
    if not valid:
        raise InvalidArgumentError(
            f"{field} must be reports/{{id}}", violations=[FieldViolation(field, "must be reports/{id}")]
        )
    return report_id


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _us(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


@dataclass(frozen=True, slots=True)
class IssuedReport:
    """An issued report and how long its parts took (seconds)."""

    row: ReportRow
    build_seconds: float
    render_seconds: float
    evidence_seconds: float


class ReportIssuer:
    def __init__(
        self,
        *,
        operations: AnalyticsOperations,
        sessions: sessionmaker[Session],
        ingest: IngestStub,
        signing: SigningStub,
        scoring: Callable[[], scoring_pb2_grpc.ScoringServiceStub] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._operations = operations
        self._sessions = sessions
        self._ingest = ingest
        self._signing = signing
        self._scoring = scoring
        self._clock = clock

    # --- issuing -----------------------------------------------------------------------------------

    async def issue(self, *, period: str, fmt: str, created_by: str, request_id: str = "") -> IssuedReport:
        """Issue the report of ``period`` (empty: the last complete week) as ``fmt``. A retry with the
        same ``request_id`` returns the report the first call issued (its bytes are not re-read)."""
        violations = check_request(period=period, fmt=fmt)
        if violations:
            raise InvalidArgumentError("the report request is invalid", violations=violations)
        if request_id:
            earlier = await run_db(self._for_request, request_id)
            if earlier is not None:
                return IssuedReport(row=earlier, build_seconds=0.0, render_seconds=0.0, evidence_seconds=0.0)
        week = period or last_complete_week(self._clock())
        started = time.perf_counter()
        report = await self.build(week)
        built = time.perf_counter()
        content = await asyncio.to_thread(rendering.render, report, fmt)
        rendered = time.perf_counter()
        row = ReportRow(
            report_id=str(uuid.uuid4()),
            period=week,
            format=fmt,
            media_type=rendering.media_type(fmt),
            sha256=hashlib.sha256(content).hexdigest(),
            content=content,
            size_bytes=len(content),
            created_by=created_by[:256],
            request_id=request_id or None,
        )
        await self._stamp_and_log(row)
        row.created_us = _us(self._clock())
        stored = await run_db(self._add, row)
        log.info(
            "report issued",
            extra={"report_id": row.report_id, "period": week, "format": fmt, "bytes": len(content)},
        )
        return IssuedReport(
            row=stored,
            build_seconds=built - started,
            render_seconds=rendered - built,
            evidence_seconds=time.perf_counter() - rendered,
        )

    async def _stamp_and_log(self, row: ReportRow) -> None:
        """Time-stamp the file's digest with the TSA, then append the ``report.issued`` event naming
        the digest and the token's digest; sets the row's token, TSA time and log event id."""
        digest = bytes.fromhex(row.sha256)
        nonce = secrets.randbits(63) | 1
        reply = await call_peer(
            self._signing().Timestamp(
                signing_pb2.TimestampRequest(request=timestamp_request(digest, nonce=nonce))
            ),
            target="signing",
        )
        token = granted_token(bytes(reply.response), digest=digest, nonce=nonce)
        event = ingest_pb2.Event(
            event_id=report_event_id(row.report_id),
            type=REPORT_EVENT_TYPE,
            source=REPORT_EVENT_SOURCE,
            occurred_at=to_timestamp(token.gen_time),
            severity=ingest_pb2.SEVERITY_INFO,
            summary=f"Weekly report {row.period} issued ({row.format})",
            details={
                "report": name_of(row.report_id),
                "period": row.period,
                "format": row.format,
                "sha256": row.sha256,
                "timestamp_token_sha256": hashlib.sha256(token.der).hexdigest(),
                "tsa_time": _rfc3339(token.gen_time),
            },
        )
        try:
            await call_peer(
                self._ingest().AppendEvent(ingest_pb2.AppendEventRequest(event=event)), target="ingest"
            )
        except AlreadyExistsError:  # an earlier attempt got through under the same event id
            log.warning("report event already in the log", extra={"report_id": row.report_id})
        row.timestamp_token = token.der
        row.tsa_time_us = _us(token.gen_time)
        row.log_event_id = event.event_id

    def _for_request(self, request_id: str) -> ReportRow | None:
        with self._sessions() as session:
            return report_store.report_for_request(session, request_id)

    def _add(self, row: ReportRow) -> ReportRow:
        try:
            with transaction(self._sessions) as session:
                return report_store.add_report(session, row)
        except IntegrityError:
            # A concurrent retry with the same idempotency key stored its report first: that one stands
            # (this call's token and log event remain, naming a file nobody was given).
            earlier = self._for_request(row.request_id) if row.request_id else None
            if earlier is None:
                raise
            return earlier

    # --- reads -------------------------------------------------------------------------------------

    async def get(self, report_id: str, *, with_content: bool) -> ReportRow:
        row = await run_db(self._get, report_id, with_content)
        if row is None:
            raise ReportNotFoundError(f"no report {name_of(report_id)}")
        return row

    def _get(self, report_id: str, with_content: bool) -> ReportRow | None:
        with self._sessions() as session:
            return report_store.get_report(session, report_id, with_content=with_content)

    async def page(
        self, *, limit: int, before: tuple[int, str] | None, sha256: str | None
    ) -> list[ReportRow]:
        return await run_db(self._list, limit, before, sha256)

    def _list(self, limit: int, before: tuple[int, str] | None, sha256: str | None) -> list[ReportRow]:
        with self._sessions() as session:
            return report_store.list_reports(session, limit=limit, before=before, sha256=sha256)

    async def inclusion_proof(self, row: ReportRow) -> ingest_pb2.GetInclusionProofResponse:
        """The report event's inclusion proof in the latest signed checkpoint, with its leaf data;
        FAILED_PRECONDITION (from ingest) until a checkpoint covers the event."""
        return await call_peer(
            self._ingest().GetInclusionProof(ingest_pb2.GetInclusionProofRequest(event_id=row.log_event_id)),
            target="ingest",
        )

    async def evidence(self, row: ReportRow) -> dict[str, Any]:
        """The offline evidence of a report (``FILE.evidence.json``)."""
        return evidence_document(row, await self.inclusion_proof(row))

    # --- building ----------------------------------------------------------------------------------

    async def build(self, week: str) -> WeeklyReport:
        start, end = parse_iso_week(week)
        weeks = [iso_week(start - timedelta(weeks=back)) for back in range(TREND_WEEKS - 1, -1, -1)]
        funnels = await self._funnels(start, end)
        trend = [await self._week_rate(label) for label in weeks]
        training = await self._operations.training(module="")
        violations = await self._operations.violations(
            days=(day_of_date(start), day_of_date(end)), policy="", department=None
        )
        return WeeklyReport.for_week(
            week,
            generated_at=self._clock(),
            k=self._operations.settings.k,
            funnels=tuple(_funnel_row(funnel) for funnel in funnels),
            trend=tuple(trend),
            departments=_departments(funnels, training),
            training=tuple(
                TrainingRow(module, figures.assigned, figures.completed, figures.overdue)
                for module, figures in training.modules
            ),
            violations=_violation_rows(violations.rows),
            riskiest=await self._riskiest(),
            log_state=await self._log_state(),
            model=await self._model_health(),
        )

    async def _funnels(self, start: date, end: date) -> list[Funnel]:
        """Funnels of the campaigns with events in the week (first event on or before its Sunday,
        last on or after its Monday)."""
        first_us = _us(datetime.combine(start, datetime.min.time(), UTC))
        after_us = _us(datetime.combine(end + timedelta(days=1), datetime.min.time(), UTC))
        active: list[str] = []
        before: tuple[int, str] | None = None
        while len(active) < MAX_CAMPAIGNS:
            page = await self._operations.list_campaigns(limit=500, before=before)
            active.extend(
                c.campaign_id for c in page if c.first_event_us < after_us and c.last_event_us >= first_us
            )
            if len(page) < 500:
                break
            before = (page[-1].first_event_us, page[-1].campaign_id)
        return [await self._operations.funnel(campaign) for campaign in sorted(active)]

    async def _week_rate(self, week: str) -> WeeklyRate:
        start, end = parse_iso_week(week)
        counts = await self._operations.event_counts(
            days=(day_of_date(start), day_of_date(end)),
            types=[_SENT, _CLICKED, _REPORTED],
            dimension=("", ""),
            department=None,
        )
        totals = dict.fromkeys((_SENT, _CLICKED, _REPORTED), 0)
        for _, kind, events in counts.rows:
            totals[kind] = totals.get(kind, 0) + events
        return WeeklyRate(week=week, sent=totals[_SENT], clicked=totals[_CLICKED], reported=totals[_REPORTED])

    async def _riskiest(self) -> tuple[RiskRow, ...]:
        rows = []
        for ranked in await self._operations.list_risks(limit=RISKIEST, after=None):
            risk = ranked.risk
            try:
                factors = (await self._operations.subject_risk(risk.pseudonym)).factors
            except SubjectRiskNotFoundError:  # objected or forgotten since the listing
                continue
            top = factors[0].factor if factors else ""
            rows.append(RiskRow(pseudonym=risk.pseudonym, score=risk.score, level=risk.level, top_factor=top))
        return tuple(rows)

    async def _model_health(self) -> ModelHealth:
        """The champion's health as scoring measures it; a report is still issued without it."""
        if self._scoring is None:
            return ModelHealth(champion_version="", note="not available: scoring is not configured")
        try:
            champions = await call_peer(
                self._scoring().ListModels(
                    scoring_pb2.ListModelsRequest(page_size=1, status=scoring_pb2.Model.STATUS_CHAMPION)
                ),
                target="scoring",
            )
            if not champions.models:
                return ModelHealth(champion_version="", note="no champion model")
            name = champions.models[0].name
            health = await call_peer(
                self._scoring().GetModelHealth(scoring_pb2.GetModelHealthRequest(name=f"{name}/health")),
                target="scoring",
            )
        except AwarenessError as error:
            return ModelHealth(champion_version="", note=f"not available: scoring answered {error.reason}")
        return model_health(health)

    async def _log_state(self) -> LogState:
        """The latest signed checkpoint, its signature checked against signing's published keys. The
        whole log is recomputed by ``awareness verify --database``, not by a report."""
        try:
            checkpoint = await call_peer(
                self._ingest().GetCheckpoint(ingest_pb2.GetCheckpointRequest()), target="ingest"
            )
        except NotFoundError:
            return LogState(0, 0, None, "", False, "no signed checkpoint yet")
        keys = await call_peer(
            self._signing().ListPublicKeys(signing_pb2.ListPublicKeysRequest(page_size=100)), target="signing"
        )
        verifiers = [
            NoteVerifier.from_vkey(key.note_verifier_key) for key in keys.public_keys if key.note_verifier_key
        ]
        try:
            verify_checkpoint(checkpoint.note, verifier_keys=verifiers)
            verified, note = True, "checkpoint signature verified against signing's published keys"
        except NoteError as error:
            verified, note = False, f"checkpoint signature does not verify: {error}"
        return LogState(
            size=checkpoint.tree_size,
            checkpoint_size=checkpoint.tree_size,
            checkpoint_time=from_timestamp(checkpoint.timestamp)
            if checkpoint.HasField("timestamp")
            else None,
            root_hash_hex=bytes(checkpoint.root_hash).hex(),
            verified=verified,
            note=note,
        )


def _funnel_row(funnel: Funnel) -> FunnelRow:
    people = {figures.stage: figures.people for figures in funnel.stages}
    return FunnelRow(
        campaign_id=funnel.campaign_id,
        sent=people.get(Stage.SENT, 0),
        opened=people.get(Stage.OPENED, 0),
        clicked=people.get(Stage.CLICKED, 0),
        submitted=people.get(Stage.SUBMITTED, 0),
        reported=people.get(Stage.REPORTED, 0),
    )


def _departments(funnels: Sequence[Funnel], training: TrainingSummary) -> tuple[DepartmentRow, ...]:
    """Per department over the week's campaigns: people sent (in its largest campaign), click and
    report rates over all its sendings, and its training completion. A department that is below k
    in every campaign and in training is suppressed (no figure at all)."""
    sent: dict[str, int] = {}
    clicked: dict[str, int] = {}
    reported: dict[str, int] = {}
    largest: dict[str, int] = {}
    suppressed: set[str] = set()
    for funnel in funnels:
        for department in funnel.departments:
            if department.suppressed:
                suppressed.add(department.department)
                continue
            name = department.department
            sent[name] = sent.get(name, 0) + department.people.get(Stage.SENT, 0)
            clicked[name] = clicked.get(name, 0) + department.people.get(Stage.CLICKED, 0)
            reported[name] = reported.get(name, 0) + department.people.get(Stage.REPORTED, 0)
            largest[name] = max(largest.get(name, 0), department.people.get(Stage.SENT, 0))
    completion: dict[str, float] = {}
    for trained in training.departments:
        if trained.suppressed:
            suppressed.add(trained.department)
        else:
            completion[trained.department] = trained.figures.completion_rate
    rows = []
    for name in sorted(set(sent) | set(completion) | suppressed):
        if not name:
            continue  # people whose department is unknown form no group
        shown = name in sent or name in completion
        if not shown:
            rows.append(DepartmentRow(name, 0, 0.0, 0.0, 0.0, True))
            continue
        whole = sent.get(name, 0)
        rows.append(
            DepartmentRow(
                department=name,
                people=largest.get(name, 0),
                click_rate=clicked.get(name, 0) / whole if whole else 0.0,
                report_rate=reported.get(name, 0) / whole if whole else 0.0,
                training_completion=completion.get(name, 0.0),
                suppressed=False,
            )
        )
    return tuple(rows)


def _violation_rows(rows: Sequence[tuple[int, str, int, int]]) -> tuple[ViolationRow, ...]:
    """The week's violations per policy and severity (the rollups count events, not people)."""
    totals: dict[tuple[str, int], int] = {}
    for _, policy, severity, events in rows:
        totals[(policy, severity)] = totals.get((policy, severity), 0) + events
    return tuple(
        ViolationRow(policy=policy, severity=_SEVERITY_NAMES.get(severity, str(severity)), events=events)
        for (policy, severity), events in sorted(totals.items())
    )


def evidence_document(row: ReportRow, proof: ingest_pb2.GetInclusionProofResponse) -> dict[str, Any]:
    """What ``awareness verify --report FILE --evidence ...`` checks offline: the report's digest, its
    RFC 3161 token, and the inclusion proof (with leaf data and signed checkpoint) of its log event."""
    return {
        "report": name_of(row.report_id),
        "period": row.period,
        "format": row.format,
        "sha256": row.sha256,
        "timestampToken": base64.b64encode(row.timestamp_token).decode("ascii"),
        "logEventId": row.log_event_id,
        "inclusionProof": json_format.MessageToDict(proof),
    }


def model_health(health: scoring_pb2.ModelHealth) -> ModelHealth:
    """The report's model section from GetModelHealth: live quality per window, the largest drift."""
    live = tuple(
        LiveQualityRow(
            window=row.window,
            model_version=row.model_version,
            challenger=row.scorer == scoring_pb2.LiveQuality.SCORER_CHALLENGER,
            labelled=row.figures.labelled_events,
            precision=row.figures.precision,
            recall=row.figures.recall,
            f1=row.figures.f1,
        )
        for row in health.live_quality
    )
    day = next((window for window in health.drift if window.window == DRIFT_WINDOW), None)
    measured = [(f.psi, f.feature, f.level) for f in day.features if f.HasField("psi")] if day else []
    if day is not None and day.HasField("score_psi"):
        measured.append((day.score_psi, "score", day.score_level))
    notes = []
    if not any(row.labelled for row in live):
        notes.append("no analyst labels in the last 30 days")
    if not measured:
        notes.append("no drift measured (fewer than 100 events scored in the last day, or no baseline)")
    largest = max(measured, default=None)
    return ModelHealth(
        champion_version=health.name.removeprefix("models/").removesuffix("/health"),
        note="; ".join(notes) or "live quality on analysts' labels and input drift over the last day",
        card_f1=health.card.f1,
        live=live,
        drift_psi=largest[0] if largest else None,
        drift_on=largest[1] if largest else "",
        drift_level=largest[2] if largest else "",
    )
