"""Seeded, deterministic generator of synthetic awareness event streams with ground-truth risk labels.

Every person gets a persona: most are benign, a minority follow one risky pattern (repeat phishing
clicker, off-hours data exfiltration, account takeover, training neglect, USB at odd hours). Risky
personas also do everything benign people do, so the event type alone never decides the label; the
time of day, the subject's history and the event's content do. See docs/data-card.md.
"""

from __future__ import annotations

import random
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from services.scoring.domain.features import FeatureInput

DATA_CARD_VERSION = "synthetic-v1"

# Ingest counts policy violations; the generator has no policy engine, so these types stand in for them.
VIOLATION_EVENT_TYPES = frozenset(
    {"phishing.clicked", "phishing.submitted_data", "training.overdue", "mfa.disabled"}
)

BENIGN = "benign"
REPEAT_CLICKER = "repeat_clicker"
EXFILTRATOR = "off_hours_uploader"
ACCOUNT_TAKEOVER = "account_takeover"
TRAINING_NEGLECT = "training_neglect"
USB_NIGHT = "usb_at_odd_hours"
RISKY_PERSONAS: tuple[str, ...] = (REPEAT_CLICKER, EXFILTRATOR, ACCOUNT_TAKEOVER, TRAINING_NEGLECT, USB_NIGHT)

# Severity as the reporting system assigns it: by event type, not by who did it. The scale is ingest's
# Severity enum: 1 info, 2 low, 3 medium, 4 high, 5 critical (0, unspecified, never reaches scoring).
_BASE_SEVERITY = {
    "phishing.email_sent": 1,
    "phishing.email_opened": 1,
    "phishing.clicked": 3,
    "phishing.submitted_data": 5,
    "phishing.reported": 1,
    "training.assigned": 1,
    "training.completed": 1,
    "training.overdue": 2,
    "policy.acknowledged": 1,
    "mfa.disabled": 4,
    "password.reset": 2,
    "device.usb_inserted": 2,
    "data.external_upload": 3,
    "login.unusual_location": 3,
    "login.failed": 2,
    "gdpr.erasure": 2,
}
_MIN_SEVERITY = 1
_MAX_SEVERITY = 5
_SUMMARY_LENGTH = {
    "phishing.email_sent": 60,
    "phishing.email_opened": 50,
    "phishing.clicked": 70,
    "phishing.submitted_data": 90,
    "phishing.reported": 55,
    "training.assigned": 80,
    "training.completed": 75,
    "training.overdue": 85,
    "policy.acknowledged": 70,
    "mfa.disabled": 65,
    "password.reset": 45,
    "device.usb_inserted": 60,
    "data.external_upload": 100,
    "login.unusual_location": 80,
    "login.failed": 40,
    "gdpr.erasure": 50,
}
_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)
_MONTH = timedelta(days=30)


@dataclass(frozen=True, kw_only=True)
class Shift:
    """Behaviour that changed after a model was trained, for drift tests; the default changes nothing.

    `working_hours_offset` moves every working-hours event by that many hours (the day's benign activity
    and the phishing simulations sent in it; off-hours behaviour and the LMS's schedule stay).
    `lure_event_type` with `lure_share`: that share of the emitted events reports the lure's type instead
    of its own, keeping its source, time, content and the subject's history (a new lure dominating what
    the reporting systems send).
    """

    working_hours_offset: float = 0.0
    lure_event_type: str = ""
    lure_share: float = 0.0

    def __post_init__(self) -> None:
        # Working hours are drawn in 08:15-17:45; within these bounds they stay on the same day.
        if not -8.0 <= self.working_hours_offset <= 6.0:
            raise ValueError("working_hours_offset must be within [-8, 6] hours")
        if not 0.0 <= self.lure_share <= 1.0 or (self.lure_share > 0 and not self.lure_event_type):
            raise ValueError("lure_share must be in [0, 1] and needs a lure_event_type")


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """Size and randomness of a synthetic organisation. `start` should be a Monday at 00:00 UTC."""

    people: int = 200
    days: int = 30
    seed: int = 7
    risky_fraction: float = 0.25
    label_noise: float = 0.03
    warmup_days: int = 14
    campaign_every_days: int = 7
    start: datetime = datetime(2025, 1, 6, tzinfo=UTC)
    shift: Shift = Shift()


@dataclass(frozen=True, slots=True, kw_only=True)
class RawEvent:
    """A generated event before aggregation, with its ground truth."""

    subject: str
    persona: str
    event_type: str
    source: str
    severity: int
    occurred_at: datetime
    summary_length: int
    detail_count: int
    risky: bool


@dataclass(frozen=True, kw_only=True)
class SyntheticDataset:
    """Events in time order with their feature inputs, observed (noisy) labels and true labels."""

    version: str
    config: GeneratorConfig
    events: tuple[RawEvent, ...]
    inputs: tuple[FeatureInput, ...]
    labels: tuple[int, ...]
    true_labels: tuple[int, ...]

    def summary(self) -> dict[str, object]:
        """Class balance and noise figures, as quoted in the data card."""
        total = len(self.labels)
        flipped = sum(observed != true for observed, true in zip(self.labels, self.true_labels, strict=True))
        personas = Counter(event.persona for event in self.events)
        return {
            "version": self.version,
            "events": total,
            "people": self.config.people,
            "days": self.config.days,
            "positives": sum(self.labels),
            "positive_rate": round(sum(self.labels) / total, 4) if total else 0.0,
            "true_positive_rate": round(sum(self.true_labels) / total, 4) if total else 0.0,
            "flipped_labels": flipped,
            "events_by_persona": dict(sorted(personas.items())),
        }


@dataclass
class _SubjectHistory:
    recent: deque[tuple[datetime, str, str]] = field(default_factory=deque)
    sources_seen: set[str] = field(default_factory=set)
    last_event_at: datetime | None = None


class HistoryAggregator:
    """Mimics ingest's per-subject aggregation: every figure covers events strictly before the current one.

    Events of one subject must arrive in time order.
    """

    def __init__(self) -> None:
        self._subjects: dict[str, _SubjectHistory] = {}

    def observe(self, event: RawEvent) -> FeatureInput:
        """Feature input for `event` from the history so far, then add `event` to that history."""
        history = self._subjects.setdefault(event.subject, _SubjectHistory())
        now = event.occurred_at
        if history.last_event_at is not None and now < history.last_event_at:
            raise ValueError(f"events of {event.subject} must arrive in time order")
        while history.recent and history.recent[0][0] < now - _MONTH:
            history.recent.popleft()
        last_day = [entry for entry in history.recent if entry[0] >= now - _DAY]
        feature_input = FeatureInput(
            event_type=event.event_type,
            source=event.source,
            severity=event.severity,
            occurred_at=now,
            summary_length=event.summary_length,
            detail_count=event.detail_count,
            events_24h=len(last_day),
            events_7d=sum(1 for entry in history.recent if entry[0] >= now - _WEEK),
            violations_30d=sum(1 for entry in history.recent if entry[1] in VIOLATION_EVENT_TYPES),
            distinct_sources_24h=len({entry[2] for entry in last_day}),
            source_is_new=event.source not in history.sources_seen,
            failed_logins_24h=sum(1 for entry in last_day if entry[1] == "login.failed"),
            seconds_since_previous_event=(
                (now - history.last_event_at).total_seconds() if history.last_event_at is not None else -1.0
            ),
        )
        history.recent.append((now, event.event_type, event.source))
        history.sources_seen.add(event.source)
        history.last_event_at = now
        return feature_input


class _PersonSimulator:
    """Emits one person's events day by day; all randomness comes from the shared seeded generator."""

    def __init__(
        self, *, subject: str, persona: str, rng: random.Random, working_hours_offset: float = 0.0
    ) -> None:
        self.subject = subject
        self.persona = persona
        self.rng = rng
        self.working_hours_offset = working_hours_offset
        self.training_assigned_on: datetime | None = None
        self.training_done = False
        self.next_overdue_at: datetime | None = None

    def event(
        self, *, event_type: str, source: str, at: datetime, risky: bool, detail_count: int | None = None
    ) -> RawEvent:
        rng = self.rng
        severity = _BASE_SEVERITY[event_type] + rng.choices((-1, 0, 1), weights=(0.1, 0.8, 0.1))[0]
        mean_length = _SUMMARY_LENGTH[event_type] * (1.3 if risky else 1.0)
        return RawEvent(
            subject=self.subject,
            persona=self.persona,
            event_type=event_type,
            source=source,
            severity=min(_MAX_SEVERITY, max(_MIN_SEVERITY, severity)),
            occurred_at=at,
            summary_length=max(10, round(rng.gauss(mean_length, mean_length * 0.2))),
            detail_count=detail_count if detail_count is not None else rng.randint(0, 3),
            risky=risky,
        )

    def working_time(self, day: datetime) -> datetime:
        # People sometimes work late; benign activity is off-hours about 6% of the time.
        if self.rng.random() < 0.06:
            return self.off_hours_time(day)
        return day + timedelta(hours=self.rng.uniform(8.25, 17.75) + self.working_hours_offset)

    def off_hours_time(self, day: datetime) -> datetime:
        hour = self.rng.uniform(19.0, 30.0)  # 19:00 to 06:00 the next morning
        return day + timedelta(hours=hour)

    def day_events(self, *, day: datetime, campaign_day: bool) -> Iterator[RawEvent]:
        yield from self.benign_day(day)
        if campaign_day:
            yield from self.phishing_campaign(day)
        yield from self.training(day)
        risky_behaviour = {
            EXFILTRATOR: self.exfiltration,
            ACCOUNT_TAKEOVER: self.account_takeover,
            USB_NIGHT: self.usb_at_odd_hours,
        }.get(self.persona)
        if risky_behaviour is not None:
            yield from risky_behaviour(day)

    def benign_day(self, day: datetime) -> Iterator[RawEvent]:
        rng = self.rng
        weekend = day.weekday() >= 5
        scale = 0.15 if weekend else 1.0
        if rng.random() < 0.10 * scale:
            at = self.working_time(day)
            for attempt in range(rng.randint(1, 2)):
                yield self.event(
                    event_type="login.failed",
                    source="idp",
                    at=at + timedelta(seconds=20 * attempt),
                    risky=False,
                )
        if rng.random() < 0.015 * scale:
            yield self.event(
                event_type="password.reset", source="idp", at=self.working_time(day), risky=False
            )
        if rng.random() < 0.05 * scale:
            yield self.event(
                event_type="device.usb_inserted", source="edr", at=self.working_time(day), risky=False
            )
        if rng.random() < 0.08 * scale:
            at = self.working_time(day)
            for upload in range(rng.randint(1, 2)):
                yield self.event(
                    event_type="data.external_upload",
                    source="dlp",
                    at=at + timedelta(minutes=7 * upload),
                    risky=False,
                    detail_count=rng.randint(1, 4),
                )
        if rng.random() < 0.012 * scale:  # travel: any hour, from the usual identity provider
            at = day + timedelta(hours=rng.uniform(0.0, 24.0))
            yield self.event(event_type="login.unusual_location", source="idp", at=at, risky=False)
        if rng.random() < 0.005 * scale:  # new phone: IT resets the password, then MFA is re-enrolled
            at = self.working_time(day)
            yield self.event(event_type="password.reset", source="idp", at=at, risky=False)
            yield self.event(
                event_type="mfa.disabled", source="idp", at=at + timedelta(minutes=3), risky=False
            )
        if rng.random() < 0.02 * scale:
            yield self.event(
                event_type="policy.acknowledged",
                source="policy-portal",
                at=self.working_time(day),
                risky=False,
            )
        if rng.random() < 0.0007:
            yield self.event(event_type="gdpr.erasure", source="gdpr", at=self.working_time(day), risky=False)

    def phishing_campaign(self, day: datetime) -> Iterator[RawEvent]:
        rng = self.rng
        clicker = self.persona == REPEAT_CLICKER
        sent_at = day + timedelta(hours=10 + self.working_hours_offset, minutes=rng.uniform(0, 30))
        yield self.event(event_type="phishing.email_sent", source="gophish", at=sent_at, risky=False)
        if rng.random() >= 0.55:
            return
        opened_at = sent_at + timedelta(minutes=rng.uniform(2, 600))
        yield self.event(event_type="phishing.email_opened", source="gophish", at=opened_at, risky=False)
        if rng.random() < (0.7 if clicker else 0.06):
            clicked_at = opened_at + timedelta(seconds=rng.uniform(5, 90 if clicker else 900))
            yield self.event(event_type="phishing.clicked", source="gophish", at=clicked_at, risky=clicker)
            if rng.random() < (0.5 if clicker else 0.15):
                submitted_at = clicked_at + timedelta(seconds=rng.uniform(10, 120))
                # Handing over credentials is risky whoever does it.
                yield self.event(
                    event_type="phishing.submitted_data",
                    source="gophish",
                    at=submitted_at,
                    risky=True,
                    detail_count=rng.randint(1, 3),
                )
        elif rng.random() < (0.05 if clicker else 0.35):
            reported_at = opened_at + timedelta(minutes=rng.uniform(1, 60))
            yield self.event(
                event_type="phishing.reported", source="mail-gateway", at=reported_at, risky=False
            )

    def training(self, day: datetime) -> Iterator[RawEvent]:
        rng = self.rng
        neglect = self.persona == TRAINING_NEGLECT
        if self.training_assigned_on is None:
            if day.weekday() < 5 and rng.random() < 0.08:
                self.training_assigned_on = day
                self.next_overdue_at = day + timedelta(days=14, hours=2)  # the LMS batch job runs at 02:00
                yield self.event(
                    event_type="training.assigned", source="lms", at=day + timedelta(hours=9), risky=False
                )
            return
        if self.training_done:
            return
        if not neglect and day.weekday() < 5 and rng.random() < 0.12:
            self.training_done = True
            yield self.event(
                event_type="training.completed", source="lms", at=self.working_time(day), risky=False
            )
            return
        if self.next_overdue_at is not None and day <= self.next_overdue_at < day + _DAY:
            self.next_overdue_at += _WEEK
            # A single late reminder is ordinary; ignoring reminders week after week is the risk.
            yield self.event(
                event_type="training.overdue", source="lms", at=day + timedelta(hours=2), risky=neglect
            )

    def exfiltration(self, day: datetime) -> Iterator[RawEvent]:
        rng = self.rng
        if rng.random() >= 0.22:
            return
        at = self.off_hours_time(day) if rng.random() < 0.85 else self.working_time(day)
        source = "casb" if rng.random() < 0.7 else "dlp"
        for _ in range(rng.randint(3, 8)):
            yield self.event(
                event_type="data.external_upload",
                source=source,
                at=at,
                risky=True,
                detail_count=rng.randint(5, 40),
            )
            at += timedelta(minutes=rng.uniform(1, 10))

    def account_takeover(self, day: datetime) -> Iterator[RawEvent]:
        rng = self.rng
        if rng.random() >= 0.07:
            return
        at = self.off_hours_time(day) if rng.random() < 0.65 else day + timedelta(hours=rng.uniform(0, 24))
        for _ in range(rng.randint(4, 12)):
            yield self.event(event_type="login.failed", source="idp", at=at, risky=True)
            at += timedelta(seconds=rng.uniform(5, 60))
        location_source = "vpn" if rng.random() < 0.5 else "idp"
        yield self.event(event_type="login.unusual_location", source=location_source, at=at, risky=True)
        at += timedelta(minutes=rng.uniform(1, 10))
        yield self.event(event_type="mfa.disabled", source="idp", at=at, risky=True)
        if rng.random() < 0.5:
            at += timedelta(minutes=rng.uniform(1, 5))
            yield self.event(event_type="password.reset", source="idp", at=at, risky=True)
        if rng.random() < 0.3:
            at += timedelta(minutes=rng.uniform(5, 30))
            yield self.event(
                event_type="data.external_upload",
                source="casb",
                at=at,
                risky=True,
                detail_count=rng.randint(3, 20),
            )

    def usb_at_odd_hours(self, day: datetime) -> Iterator[RawEvent]:
        rng = self.rng
        if rng.random() >= 0.18:
            return
        at = day + timedelta(hours=rng.uniform(9, 17)) if day.weekday() >= 5 else self.off_hours_time(day)
        for _ in range(rng.randint(1, 3)):
            yield self.event(event_type="device.usb_inserted", source="edr", at=at, risky=True)
            at += timedelta(minutes=rng.uniform(2, 20))
        if rng.random() < 0.4:
            yield self.event(
                event_type="data.external_upload",
                source="dlp",
                at=at + timedelta(minutes=rng.uniform(5, 30)),
                risky=True,
                detail_count=rng.randint(3, 25),
            )


def generate(config: GeneratorConfig | None = None) -> SyntheticDataset:
    """Generate a labelled event stream; identical configs give identical datasets."""
    config = config or GeneratorConfig()
    if config.people < 1 or config.days < 1 or config.warmup_days < 0:
        raise ValueError("people and days must be >= 1 and warmup_days >= 0")
    if not 0.0 <= config.label_noise < 0.5 or not 0.0 <= config.risky_fraction <= 1.0:
        raise ValueError("label_noise must be in [0, 0.5) and risky_fraction in [0, 1]")
    rng = random.Random(config.seed)
    simulators = []
    for number in range(config.people):
        persona = rng.choice(RISKY_PERSONAS) if rng.random() < config.risky_fraction else BENIGN
        simulators.append(
            _PersonSimulator(
                subject=f"subject-{number:05d}",
                persona=persona,
                rng=rng,
                working_hours_offset=config.shift.working_hours_offset,
            )
        )

    raw: list[RawEvent] = []
    first_day = config.start - timedelta(days=config.warmup_days)
    for day_number in range(config.warmup_days + config.days):
        day = first_day + timedelta(days=day_number)
        campaign_day = day_number % config.campaign_every_days == 1
        for simulator in simulators:
            raw.extend(simulator.day_events(day=day, campaign_day=campaign_day))
    # Stable order: time, then subject, then generation order for simultaneous events.
    ordered = sorted(enumerate(raw), key=lambda item: (item[1].occurred_at, item[1].subject, item[0]))

    aggregator = HistoryAggregator()
    events: list[RawEvent] = []
    inputs: list[FeatureInput] = []
    # Its own generator: a config without a lure draws nothing from it, so its stream is unchanged.
    lure_rng = random.Random(f"{config.seed}/lure")
    lure = config.shift.lure_event_type
    for _, event in ordered:
        feature_input = aggregator.observe(event)
        if event.occurred_at >= config.start:  # the warm-up only builds history, as a live system has
            if config.shift.lure_share > 0 and lure_rng.random() < config.shift.lure_share:
                event = replace(event, event_type=lure)
                feature_input = replace(feature_input, event_type=lure)
            events.append(event)
            inputs.append(feature_input)

    noise_rng = random.Random(f"{config.seed}/label-noise")
    true_labels = tuple(int(event.risky) for event in events)
    labels = tuple(1 - label if noise_rng.random() < config.label_noise else label for label in true_labels)
    return SyntheticDataset(
        version=DATA_CARD_VERSION,
        config=config,
        events=tuple(events),
        inputs=tuple(inputs),
        labels=labels,
        true_labels=true_labels,
    )
