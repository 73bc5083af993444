"""Messages to domain values and back, with the checks the generic request validation cannot make."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Final

from awareness.analytics.v1 import analytics_pb2

from services.analytics.domain.facts import Fact, Violation, date_of_day, day_of_date
from services.analytics.domain.funnel import Durations, Funnel, Rates, Stage
from services.analytics.domain.training import TrainingFigures, TrainingSummary
from services.analytics.service import RiskView
from services.runtime.errors import FieldViolation, InvalidArgumentError
from services.runtime.timestamps import timestamp_to_us
from services.runtime.validation import MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS

MAX_FACTS: Final = 1000
MAX_PSEUDONYMS: Final = 1000
MAX_RANGE_DAYS: Final = 400
DIMENSION_KEY_CHARS: Final = 64
DIMENSION_VALUE_CHARS: Final = 256

STAGE_PROTO: Final = {
    Stage.SENT: analytics_pb2.FUNNEL_STAGE_SENT,
    Stage.OPENED: analytics_pb2.FUNNEL_STAGE_OPENED,
    Stage.CLICKED: analytics_pb2.FUNNEL_STAGE_CLICKED,
    Stage.SUBMITTED: analytics_pb2.FUNNEL_STAGE_SUBMITTED_DATA,
    Stage.REPORTED: analytics_pb2.FUNNEL_STAGE_REPORTED,
}
LEVEL_PROTO: Final = {
    "low": analytics_pb2.RISK_LEVEL_LOW,
    "moderate": analytics_pb2.RISK_LEVEL_MODERATE,
    "high": analytics_pb2.RISK_LEVEL_HIGH,
    "critical": analytics_pb2.RISK_LEVEL_CRITICAL,
}


def invalid(field: str, message: str, *, reason: str = "INVALID_ARGUMENT") -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{field} {message}", reason=reason, violations=[FieldViolation(field, message)]
    )


def batch_size(count: int, *, field: str, maximum: int) -> None:
    if not 1 <= count <= maximum:
        raise invalid(field, f"must hold 1 to {maximum} items, got {count}", reason="INVALID_BATCH_SIZE")


# RecordEvents checks its facts itself (ServiceApp.validated_fields), in one pass that the generic walk
# would make several times slower: what no column can hold (NUL, over-long text, a timestamp no datetime
# holds) and what a fact needs.
FACTS_FIELD: Final = "awareness.analytics.v1.RecordEventsRequest.facts"
TEXT_CHARS: Final = 128


def _unstorable(value: str, limit: int) -> bool:
    return len(value) > limit or "\x00" in value


def fact_violations(fact: analytics_pb2.EventFact, path: str) -> list[FieldViolation]:
    found = [
        FieldViolation(f"{path}.{name}", "is required")
        for name, value in (("event_id", fact.event_id), ("type", fact.type))
        if not value
    ]
    for name, value in (
        ("event_id", fact.event_id),
        ("type", fact.type),
        ("subject_pseudonym", fact.subject_pseudonym),
        ("department", fact.department),
    ):
        if _unstorable(value, TEXT_CHARS):
            found.append(
                FieldViolation(f"{path}.{name}", f"must be at most {TEXT_CHARS} characters, without NUL")
            )
    if not fact.HasField("occurred_at"):
        found.append(FieldViolation(f"{path}.occurred_at", "is required"))
    elif not (MIN_TIMESTAMP_SECONDS <= fact.occurred_at.seconds <= MAX_TIMESTAMP_SECONDS):
        found.append(FieldViolation(f"{path}.occurred_at", "must be between 0001-01-01 and 9999-12-31"))
    if not 0 <= fact.severity <= 5:
        found.append(FieldViolation(f"{path}.severity", "must be 0 to 5"))
    if fact.scored and not 0.0 <= fact.risk_score <= 1.0:
        found.append(FieldViolation(f"{path}.risk_score", "must be in [0, 1] when scored"))
    for key, value in fact.dimensions.items():
        if not key or _unstorable(key, DIMENSION_KEY_CHARS) or _unstorable(value, DIMENSION_VALUE_CHARS):
            found.append(
                FieldViolation(
                    f"{path}.dimensions",
                    f"keys must be 1 to {DIMENSION_KEY_CHARS} characters, "
                    f"values at most {DIMENSION_VALUE_CHARS}, without NUL",
                )
            )
    for index, violation in enumerate(fact.violations):
        if not violation.policy or _unstorable(violation.policy, TEXT_CHARS):
            found.append(
                FieldViolation(f"{path}.violations[{index}].policy", f"must be 1 to {TEXT_CHARS} characters")
            )
    return found


def facts_from(request: analytics_pb2.RecordEventsRequest) -> list[Fact]:
    batch_size(len(request.facts), field="facts", maximum=MAX_FACTS)
    violations = [
        v for index, fact in enumerate(request.facts) for v in fact_violations(fact, f"facts[{index}]")
    ]
    if violations:
        raise InvalidArgumentError(
            f"{len(violations)} invalid fact field(s), first: {violations[0].field}",
            reason="INVALID_FACT",
            violations=violations,
        )
    return [
        Fact(
            event_id=fact.event_id,
            type=fact.type,
            occurred_us=timestamp_to_us(fact.occurred_at),
            pseudonym=fact.subject_pseudonym,
            severity=fact.severity,
            dimensions=dict(fact.dimensions),
            department=fact.department,
            scored=fact.scored,
            risk_score=fact.risk_score,
            violations=tuple(Violation(v.policy, v.severity) for v in fact.violations),
        )
        for fact in request.facts
    ]


def pseudonyms_from(request: analytics_pb2.ForgetSubjectsRequest) -> list[str]:
    batch_size(len(request.subject_pseudonyms), field="subject_pseudonyms", maximum=MAX_PSEUDONYMS)
    for index, pseudonym in enumerate(request.subject_pseudonyms):
        if not pseudonym:
            raise invalid(f"subject_pseudonyms[{index}]", "must not be empty")
    return list(request.subject_pseudonyms)


def day_range(start: str, end: str) -> tuple[int, int]:
    """Whole days (since the epoch) of an inclusive `YYYY-MM-DD` range, at most MAX_RANGE_DAYS long."""
    first, last = _day(start, "start_day"), _day(end, "end_day")
    if last < first:
        raise invalid("end_day", "must not be before start_day")
    if last - first > MAX_RANGE_DAYS:
        raise invalid("end_day", f"must be at most {MAX_RANGE_DAYS} days after start_day")
    return first, last


def _day(text: str, field: str) -> int:
    try:
        if len(text) != 10:
            raise ValueError(text)
        return day_of_date(date.fromisoformat(text))
    except ValueError:
        raise invalid(field, "must be a day as YYYY-MM-DD") from None


def day_text(day: int) -> str:
    return date_of_day(day).isoformat()


def dimension_filter(key: str, value: str) -> tuple[str, str]:
    if bool(key) != bool(value):
        raise invalid("dimension_value" if key else "dimension_key", "must be set together with the other")
    return key, value


def rates_proto(rates: Rates) -> analytics_pb2.FunnelRates:
    return analytics_pb2.FunnelRates(
        open_rate=rates.open_rate,
        click_rate=rates.click_rate,
        submit_rate=rates.submit_rate,
        report_rate=rates.report_rate,
    )


def _durations_proto(value: Durations) -> analytics_pb2.DurationSummary:
    return analytics_pb2.DurationSummary(
        count=value.count, median_seconds=value.median_seconds, p90_seconds=value.p90_seconds
    )


def funnel_proto(funnel: Funnel) -> analytics_pb2.CampaignFunnel:
    return analytics_pb2.CampaignFunnel(
        campaign_id=funnel.campaign_id,
        stages=[
            analytics_pb2.StageCount(stage=STAGE_PROTO[s.stage], events=s.events, people=s.people)
            for s in funnel.stages
        ],
        rates=rates_proto(funnel.rates),
        time_to_click=_durations_proto(funnel.time_to_click),
        time_to_report=_durations_proto(funnel.time_to_report),
        departments=[
            analytics_pb2.DepartmentFunnel(
                department=d.department,
                suppressed=d.suppressed,
                stages=[
                    analytics_pb2.StageCount(stage=STAGE_PROTO[stage], people=d.people.get(stage, 0))
                    for stage in Stage
                ],
                rates=rates_proto(d.rates),
            )
            for d in funnel.departments
        ],
    )


def _figures_proto(value: TrainingFigures) -> analytics_pb2.TrainingFigures:
    return analytics_pb2.TrainingFigures(
        assigned=value.assigned,
        completed=value.completed,
        overdue=value.overdue,
        completion_rate=value.completion_rate,
        overdue_rate=value.overdue_rate,
    )


def training_proto(summary: TrainingSummary) -> analytics_pb2.TrainingSummary:
    return analytics_pb2.TrainingSummary(
        total=_figures_proto(summary.total),
        modules=[
            analytics_pb2.ModuleTraining(training_module=name, figures=_figures_proto(figures))
            for name, figures in summary.modules
        ],
        departments=[
            analytics_pb2.DepartmentTraining(
                department=d.department, suppressed=d.suppressed, figures=_figures_proto(d.figures)
            )
            for d in summary.departments
        ],
    )


def risk_proto(view: RiskView) -> analytics_pb2.SubjectRisk:
    return analytics_pb2.SubjectRisk(
        subject_pseudonym=view.pseudonym,
        score=view.score,
        level=LEVEL_PROTO[view.level],
        event_count=view.event_count,
        top_events=[
            analytics_pb2.RiskContribution(
                event_id=c.event_id, type=c.type, contribution=c.contribution, day=day_text(c.day)
            )
            for c in view.top_events
        ],
        factors=[
            analytics_pb2.RiskFactor(factor=f.factor, contribution=f.contribution, share=f.share)
            for f in view.factors
        ],
        trend=[analytics_pb2.WeeklyRisk(week=w.week, score=w.score) for w in view.trend],
    )


def counts_rows(rows: Sequence[tuple[int, str, int]]) -> list[analytics_pb2.EventCount]:
    return [analytics_pb2.EventCount(day=day_text(day), type=kind, count=count) for day, kind, count in rows]


def violation_rows(rows: Sequence[tuple[int, str, int, int]]) -> list[analytics_pb2.ViolationCount]:
    return [
        analytics_pb2.ViolationCount(day=day_text(day), policy=policy, severity=severity, count=count)
        for day, policy, severity, count in rows
    ]
