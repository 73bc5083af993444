"""``make bench-analytics``: the analytics service's fold rate, risk queries and weekly report.

The real signing, gdpr, ingest and analytics processes (as ``awareness up`` starts them, on a
scratch PostgreSQL database when DATABASE_URL is set, created and dropped; else each service's
embedded SQLite default, said in the output). The client calls analytics as its peers do: over mTLS,
as ingest for RecordEvents, as an analyst through the gateway's certificate for the risk reads.

A synthetic programme (``programme``) over ``--subjects`` people in 40 departments (two of them
smaller than k), 13 weeks to now: 12 phishing campaigns (sent -> opened -> clicked -> submitted ->
reported), three training modules (assigned, completed, overdue), policy acknowledgements, and
sign-in, device, upload and account events filling the rest up to ``--events``. About 70% of the
non-send events carry a risk score; clicks, submissions, uploads and USB devices carry violations.
Each person is a real gdpr pseudonym (created through GetSubjectKeys as ingest creates them), so
gdpr's CheckConsent answers for every one (the ``analytics`` and ``profiling`` defaults: granted).

Measured:

1. **fold**: the facts, oldest first, in RecordEvents batches of ``--batch`` (500, as ingest's feed
   sends them: services/ingest/analytics_feed.py), by ``--concurrency`` senders taking the next batch
   from one queue. *cold* is the leading batches up to the one where the last person is first seen
   (every person new to the rollups and to the consent cache); *warm* is the rest. Per-batch p50/p99,
   facts/s, and the ratio to the 10,000 facts/s that ingest streams.
   Baseline (same run): a plain INSERT of the same facts' rows (event id, pseudonym, day, type,
   risk: what the fold claims per fact) with psycopg2 ``execute_values``, in the same batches and
   concurrency, into a table of the same database.
2. **risk reads**: GetSubjectRisk for ``--queries`` random pseudonyms, each once (cold: first call
   per pseudonym) then again (warm), and ListSubjectRisks' first page (50) ``--list-calls`` times,
   by ``--query-concurrency`` callers. Baseline: the gRPC health check of the same process.
3. **weekly report**: the last complete week's report issued in html and pdf (ReportIssuer.issue,
   in this process on the same database: build from the rollups, render, time-stamp, log), against
   the 30 s target.

Prints one markdown table (with the date and the machine) and writes it as JSON to
``--out-dir`` (``bench-results/analytics-<time>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import grpc
from awareness.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.ingest import _free_port, _scratch_postgres, _Suite
from services.launcher import grpc_serving
from services.runtime import auth
from services.runtime.identity import MtlsFiles, channel_options
from services.runtime.timestamps import timestamp_from_us

TARGET_FACTS_PER_SECOND: Final = 10_000.0
TARGET_RISK_P99_MS: Final = 50.0
TARGET_REPORT_SECONDS: Final = 30.0
DEFAULT_EVENTS: Final = 1_000_000
DEFAULT_SUBJECTS: Final = 5_000
DEPARTMENTS: Final = 40
SMALL_DEPARTMENT: Final = 3  # below the default k of 5: suppressed in every aggregate by group
CAMPAIGNS: Final = 12
WEEKS: Final = 13
MICROS: Final = 1_000_000
DAY_US: Final = 86_400 * MICROS
REPO: Final = Path(__file__).resolve().parents[1]
SERVICES: Final = {
    "signing": "awareness.signing.v1.SigningService",
    "gdpr": "awareness.gdpr.v1.GdprService",
    "analytics": "awareness.analytics.v1.AnalyticsService",
    "ingest": "awareness.ingest.v1.IngestService",
}
RECORD_EVENTS: Final = "/awareness.analytics.v1.AnalyticsService/RecordEvents"
ANALYST: Final = auth.Principal("bench:analyst", frozenset({"analyst"}))
TEMPLATES: Final = ("invoice", "parcel", "payroll", "password-expiry")
MODULES: Final = ("phishing-basics", "password-hygiene", "data-handling")
# Everything that is not a campaign, a training or a policy acknowledgement: (type, share, risk range).
BACKGROUND: Final = (
    ("login.failed", 0.55, (0.01, 0.3)),
    ("login.unusual_location", 0.15, (0.2, 0.8)),
    ("device.usb_inserted", 0.12, (0.1, 0.6)),
    ("data.external_upload", 0.08, (0.3, 0.9)),
    ("password.reset", 0.08, (0.0, 0.2)),
    ("mfa.disabled", 0.02, (0.5, 0.95)),
)
BACKGROUND_DIMENSIONS: Final[dict[str, tuple[dict[str, str], ...]]] = {
    "login.failed": tuple(
        {"application": app, "method": "password", "reason": reason}
        for app in ("vpn", "mail", "crm", "hr-portal")
        for reason in ("bad-password", "locked")
    ),
    "login.unusual_location": tuple(
        {"application": "mail", "country": country} for country in ("BR", "NG", "RU", "US", "VN")
    ),
    "device.usb_inserted": tuple(
        {"device_class": "mass-storage", "action": action} for action in ("allowed", "blocked", "audited")
    ),
    "data.external_upload": tuple(
        {"destination_category": category, "channel": "browser", "action": action}
        for category in ("personal-cloud", "webmail")
        for action in ("allowed", "blocked")
    ),
    "password.reset": ({"method": "self-service", "actor_type": "self"},),
    "mfa.disabled": ({"method": "totp", "actor_type": "admin"},),
}


# --- the programme ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedFact:
    """One fact of the programme, about person ``person`` (an index); its pseudonym comes from gdpr."""

    occurred_us: int
    person: int
    type: str
    dimensions: dict[str, str]
    risk: float | None = None  # None: not scored
    violation: tuple[str, int] | None = None


def departments_of(subjects: int, rng: random.Random) -> list[str]:
    """Each person's department: sizes skewed (a few large, many small), two below k when there are
    enough people for them to matter."""
    names = [f"dept-{index:02d}" for index in range(DEPARTMENTS)]
    small = names[-2:] if subjects >= 20 * DEPARTMENTS else []
    large = [name for name in names if name not in small]
    weights = [1.0 / (index + 1) ** 0.8 for index in range(len(large))]
    found = [name for name in small for _ in range(SMALL_DEPARTMENT)]
    found += rng.choices(large, weights=weights, k=subjects - len(found))
    rng.shuffle(found)
    return found


def _between(rng: random.Random, low_us: int, high_us: int) -> int:
    return rng.randrange(low_us, max(high_us, low_us + 1))


def _scored(rng: random.Random, low: float, high: float) -> float | None:
    return round(rng.uniform(low, high), 4) if rng.random() < 0.7 else None


def _campaigns(subjects: int, start_us: int, rng: random.Random) -> Iterator[PlannedFact]:
    # The last campaign is sent in week 12 of 13: every one starts before now.
    for number in range(CAMPAIGNS):
        dimensions = {"campaign_id": f"bench-c{number:02d}", "template": TEMPLATES[number % len(TEMPLATES)]}
        sent_at = start_us + number * 7 * DAY_US + DAY_US + 9 * 3600 * MICROS
        for person in range(subjects):
            sent = sent_at + rng.randrange(3600 * MICROS)
            yield PlannedFact(sent, person, "phishing.email_sent", dimensions)
            if rng.random() < 0.55:
                opened = sent + rng.randrange(60 * MICROS, 2 * DAY_US)
                yield PlannedFact(opened, person, "phishing.email_opened", dimensions, _scored(rng, 0.0, 0.1))
                if rng.random() < 0.25:
                    clicked = opened + rng.randrange(10 * MICROS, 3600 * MICROS)
                    violation = ("no-clicks", 3) if rng.random() < 0.5 else None
                    yield PlannedFact(
                        clicked, person, "phishing.clicked", dimensions, _scored(rng, 0.5, 0.95), violation
                    )
                    if rng.random() < 0.3:
                        submitted = clicked + rng.randrange(5 * MICROS, 600 * MICROS)
                        yield PlannedFact(
                            submitted,
                            person,
                            "phishing.submitted_data",
                            dimensions,
                            _scored(rng, 0.8, 1.0),
                            ("no-credential-entry", 4),
                        )
            if rng.random() < 0.22:
                reported = sent + rng.randrange(300 * MICROS, DAY_US)
                yield PlannedFact(
                    reported,
                    person,
                    "phishing.reported",
                    {**dimensions, "report_channel": "button"},
                    _scored(rng, 0.0, 0.05),
                )


def _training(subjects: int, start_us: int, now_us: int, rng: random.Random) -> Iterator[PlannedFact]:
    for number, module in enumerate(MODULES):
        dimensions = {"training_module": module}
        assigned_at = start_us + (1 + 4 * number) * 7 * DAY_US
        for person in range(subjects):
            assigned = assigned_at + rng.randrange(DAY_US)
            yield PlannedFact(assigned, person, "training.assigned", dimensions)
            if rng.random() < 0.8:
                completed = assigned + rng.randrange(DAY_US, 20 * DAY_US)
                if completed < now_us:
                    yield PlannedFact(
                        completed, person, "training.completed", dimensions, _scored(rng, 0, 0.05)
                    )
                    continue
            overdue = assigned + 14 * DAY_US
            if overdue < now_us and rng.random() < 0.75:
                yield PlannedFact(overdue, person, "training.overdue", dimensions, _scored(rng, 0.2, 0.5))


def _acknowledgements(subjects: int, start_us: int, now_us: int, rng: random.Random) -> Iterator[PlannedFact]:
    dimensions = {"policy_id": "acceptable-use", "policy_version": "3"}
    for person in range(subjects):
        yield PlannedFact(_between(rng, start_us, now_us), person, "policy.acknowledged", dimensions)


def _background(
    count: int, subjects: int, start_us: int, now_us: int, rng: random.Random
) -> list[PlannedFact]:
    kinds = rng.choices(range(len(BACKGROUND)), weights=[share for _, share, _ in BACKGROUND], k=count)
    found = []
    for kind_index in kinds:
        kind, _, (low, high) = BACKGROUND[kind_index]
        dimensions = rng.choice(BACKGROUND_DIMENSIONS[kind])
        violation = None
        if kind == "data.external_upload" and dimensions["action"] == "allowed":
            violation = ("dlp-personal-cloud", 4)
        elif kind == "device.usb_inserted" and dimensions["action"] != "blocked":
            violation = ("usb-mass-storage", 3)
        found.append(
            PlannedFact(
                _between(rng, start_us, now_us),
                rng.randrange(subjects),
                kind,
                dimensions,
                _scored(rng, low, high),
                violation,
            )
        )
    return found


def programme(*, events: int, subjects: int, now: datetime, seed: int = 7) -> list[PlannedFact]:
    """``events`` facts about ``subjects`` people over the 13 weeks up to ``now``, oldest first."""
    rng = random.Random(seed)
    now_us = int(now.timestamp() * MICROS) - 60 * MICROS
    start_us = now_us - WEEKS * 7 * DAY_US
    structured = [
        *_campaigns(subjects, start_us, rng),
        *_training(subjects, start_us, now_us, rng),
        *_acknowledgements(subjects, start_us, now_us, rng),
    ]
    if len(structured) >= events:
        planned = rng.sample(structured, events)
    else:
        planned = structured + _background(events - len(structured), subjects, start_us, now_us, rng)
    planned.sort(key=lambda fact: fact.occurred_us)
    return planned


def cold_batches(planned: Sequence[PlannedFact], *, batch: int) -> int:
    """How many leading batches it takes until every person of the programme has been seen."""
    seen: set[int] = set()
    everyone = len({fact.person for fact in planned})
    for index, fact in enumerate(planned):
        seen.add(fact.person)
        if len(seen) == everyone:
            return index // batch + 1
    return math.ceil(len(planned) / batch)


def record_requests(
    planned: Sequence[PlannedFact],
    *,
    pseudonyms: Sequence[str],
    departments: Sequence[str],
    batch: int,
    run: str,
) -> list[bytes]:
    """The RecordEvents requests, serialised before the clock starts (the feed's side is not measured)."""
    requests = []
    for start in range(0, len(planned), batch):
        request = analytics_pb2.RecordEventsRequest()
        for number, planned_fact in enumerate(planned[start : start + batch], start=start):
            fact = request.facts.add(
                event_id=f"{run}-{number:08d}",
                type=planned_fact.type,
                occurred_at=timestamp_from_us(planned_fact.occurred_us),
                subject_pseudonym=pseudonyms[planned_fact.person],
                severity=4 if planned_fact.violation else 3 if planned_fact.risk else 1,
                department=departments[planned_fact.person],
                scored=planned_fact.risk is not None,
                risk_score=planned_fact.risk or 0.0,
            )
            fact.dimensions.update(planned_fact.dimensions)
            if planned_fact.violation is not None:
                fact.violations.add(policy=planned_fact.violation[0], severity=planned_fact.violation[1])
        requests.append(request.SerializeToString())
    return requests


# --- measuring ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


@dataclass(frozen=True)
class Timed:
    """Calls (or batches) of one step: how many, over how long, and their latencies (ms)."""

    name: str
    calls: int
    items: int  # facts for a fold, calls for a query
    seconds: float
    latencies_ms: Sequence[float] = field(repr=False)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds else float("nan")

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 0.5)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 0.99)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "calls": self.calls,
            "items": self.items,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.per_second, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "errors": self.errors,
            # In completion order: whether calls slow down as the store grows.
            "p50_ms_by_tenth": [round(percentile(part, 0.5), 1) for part in tenths(self.latencies_ms)],
        }


def tenths(values: Sequence[float]) -> list[Sequence[float]]:
    """``values`` in ten consecutive parts (fewer when there are fewer than ten values)."""
    size = max(1, math.ceil(len(values) / 10))
    return [values[start : start + size] for start in range(0, len(values), size)]


async def timed_calls(
    name: str,
    calls: Sequence[Callable[[], Awaitable[int]]],
    *,
    concurrency: int,
) -> Timed:
    """Run ``calls`` by ``concurrency`` workers taking the next from one queue; each returns how many
    items it carried. A gRPC error is counted by its code, its latency kept."""
    pending = iter(calls)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    items = 0

    async def worker() -> None:
        nonlocal items
        for call in pending:
            began = time.perf_counter()
            try:
                carried = await call()  # not `items += await ...`: that reads items before awaiting
                items += carried
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] = errors.get(error.code().name, 0) + 1
            latencies.append((time.perf_counter() - began) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return Timed(name, len(latencies), items, time.perf_counter() - started, latencies, errors)


@dataclass(frozen=True)
class FoldCounts:
    folded: int = 0
    duplicates: int = 0
    excluded: int = 0


@dataclass(frozen=True)
class ReportRun:
    format: str
    seconds: float
    build_seconds: float
    render_seconds: float
    evidence_seconds: float
    size_bytes: int
    week: str
    campaigns: int
    how: str  # "issued" (ReportIssuer.issue) or "built and rendered" (without the evidence step)


@dataclass
class Figures:
    backend: str
    events: int
    subjects: int
    batch: int
    concurrency: int
    query_concurrency: int
    fold_cold: Timed
    fold_warm: Timed | None
    fold_counts: FoldCounts
    insert_cold: Timed
    insert_warm: Timed | None
    risk_cold: Timed
    risk_warm: Timed
    listing: Timed
    health: Timed
    reports: list[ReportRun]
    generate_seconds: float
    date: str = field(default_factory=lambda: f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    machine: str = ""
    load: str = ""  # the 1-minute load average at the start and the end: others' work shows here


def fold_total(figures: Figures) -> Timed:
    parts = [figures.fold_cold, *([figures.fold_warm] if figures.fold_warm else [])]
    return _joined("fold, all", parts)


def insert_total(figures: Figures) -> Timed:
    parts = [figures.insert_cold, *([figures.insert_warm] if figures.insert_warm else [])]
    return _joined("plain INSERT, all", parts)


def _joined(name: str, parts: Sequence[Timed]) -> Timed:
    return Timed(
        name,
        sum(part.calls for part in parts),
        sum(part.items for part in parts),
        sum(part.seconds for part in parts),
        [latency for part in parts for latency in part.latencies_ms],
    )


# --- the suite ----------------------------------------------------------------------------------


class AnalyticsSuite(_Suite):
    """signing, gdpr, analytics and ingest as child processes (bench/ingest.py's, plus analytics)."""

    def __init__(self, *, data_dir: Path, database_url: str | None) -> None:
        super().__init__(data_dir=data_dir, database_url=database_url)
        self.ports["analytics"] = _free_port()

    def start(self) -> None:
        for name in (*SERVICES, "gateway"):  # every identity first: no two processes race for the CA
            self.identity(name)
        for name, service in SERVICES.items():
            log = (self.data_dir / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "serve", name],
                cwd=REPO,
                env=self.env(name),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 90
            while not grpc_serving(
                f"127.0.0.1:{self.ports[name]}", mtls=self.identity(name), server=name, service=service
            ):
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.data_dir / f'{name}.log'}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not become healthy")
                time.sleep(0.2)

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def channel(self, service: str, caller: str) -> grpc.aio.Channel:
        mtls: MtlsFiles = self.identity(caller)
        return grpc.aio.secure_channel(
            f"127.0.0.1:{self.ports[service]}",
            mtls.channel_credentials(),
            options=[("grpc.max_send_message_length", 64 << 20), *channel_options(service)],
        )


async def gdpr_pseudonyms(suite: AnalyticsSuite, subjects: int, *, namespace: str) -> list[str]:
    """A gdpr pseudonym for each person, created on first sight as ingest has them created."""
    channel = suite.channel("gdpr", "ingest")
    stub = gdpr_pb2_grpc.GdprServiceStub(channel)
    now_us = time.time_ns() // 1000
    found: list[str] = []
    try:
        for start in range(0, subjects, 1000):
            lookups = [
                gdpr_pb2.SubjectKeyLookup(
                    subject=f"{namespace}user-{person}@example.org",
                    occurred_at=timestamp_from_us(now_us),
                    event_type="phishing.email_sent",
                )
                for person in range(start, min(subjects, start + 1000))
            ]
            answer = await stub.GetSubjectKeys(gdpr_pb2.GetSubjectKeysRequest(lookups=lookups), timeout=120)
            found.extend(key.pseudonym for key in answer.keys)
    finally:
        await channel.close()
    return found


# --- the steps ----------------------------------------------------------------------------------


async def fold(
    suite: AnalyticsSuite, requests: Sequence[bytes], *, sizes: Sequence[int], cold: int, concurrency: int
) -> tuple[Timed, Timed | None, FoldCounts]:
    channel = suite.channel("analytics", "ingest")
    record = channel.unary_unary(
        RECORD_EVENTS,
        request_serializer=None,  # already serialised
        response_deserializer=analytics_pb2.RecordEventsResponse.FromString,
    )
    counts = [0, 0, 0]

    def call(index: int) -> Callable[[], Awaitable[int]]:
        async def send() -> int:
            answer = await record(requests[index], timeout=300)
            counts[0] += answer.folded
            counts[1] += answer.duplicates
            counts[2] += answer.excluded
            return sizes[index]

        return send

    try:
        _progress(f"folding {sum(sizes):,} facts: {cold} cold batch(es) first")
        cold_run = await timed_calls("fold, cold", [call(i) for i in range(cold)], concurrency=concurrency)
        warm_run = None
        if cold < len(requests):
            _progress(f"folding the {len(requests) - cold:,} warm batch(es)")
            warm_run = await timed_calls(
                "fold, warm", [call(i) for i in range(cold, len(requests))], concurrency=concurrency
            )
    finally:
        await channel.close()
    return cold_run, warm_run, FoldCounts(*counts)


def _plain_rows(planned: Sequence[PlannedFact], pseudonyms: Sequence[str], run: str) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{run}-{number:08d}",
            "pseudonym": pseudonyms[fact.person],
            "day": fact.occurred_us // DAY_US,
            "type": fact.type,
            "risk": fact.risk or 0.0,
        }
        for number, fact in enumerate(planned)
    ]


async def plain_insert(
    url: str, rows: Sequence[dict[str, Any]], *, batch: int, cold: int, concurrency: int
) -> tuple[Timed, Timed | None]:
    """The same facts' rows INSERTed as they are (psycopg2 through SQLAlchemy: one multi-row INSERT
    per batch), in the same batches and concurrency, one transaction each: the floor under a fold of
    them into a store."""
    from sqlalchemy import Column, Float, Integer, MetaData, String, Table, create_engine

    table = Table(
        "bench_plain_facts",
        MetaData(),
        Column("event_id", String(128), primary_key=True),
        Column("pseudonym", String(128)),
        Column("day", Integer),
        Column("type", String(128)),
        Column("risk", Float),
    )
    engine = (
        create_engine(url, pool_size=max(1, concurrency))
        if url.startswith("postgresql")
        else create_engine(url)
    )
    table.drop(engine, checkfirst=True)
    table.create(engine)
    chunks = [rows[start : start + batch] for start in range(0, len(rows), batch)]

    def insert(chunk: Sequence[dict[str, Any]]) -> int:
        with engine.begin() as connection:
            connection.execute(table.insert(), list(chunk))
        return len(chunk)

    def call(chunk: Sequence[dict[str, Any]]) -> Callable[[], Awaitable[int]]:
        return lambda: asyncio.to_thread(insert, chunk)

    try:
        cold_run = await timed_calls(
            "plain INSERT, cold", [call(c) for c in chunks[:cold]], concurrency=concurrency
        )
        warm_run = (
            await timed_calls("plain INSERT, warm", [call(c) for c in chunks[cold:]], concurrency=concurrency)
            if cold < len(chunks)
            else None
        )
    finally:
        table.drop(engine, checkfirst=True)
        engine.dispose()
    return cold_run, warm_run


async def risk_reads(
    suite: AnalyticsSuite, pseudonyms: Sequence[str], *, queries: int, list_calls: int, concurrency: int
) -> tuple[Timed, Timed, Timed, Timed]:
    channel = suite.channel("analytics", "gateway")  # an analyst's call, carried by the gateway
    stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    metadata = auth.principal_metadata(ANALYST)
    chosen = random.Random(11).sample(list(pseudonyms), min(queries, len(pseudonyms)))

    def get(pseudonym: str) -> Callable[[], Awaitable[int]]:
        async def call() -> int:
            request = analytics_pb2.GetSubjectRiskRequest(subject_pseudonym=pseudonym)
            await stub.GetSubjectRisk(request, metadata=metadata, timeout=60)
            return 1

        return call

    async def first_page() -> int:
        await stub.ListSubjectRisks(
            analytics_pb2.ListSubjectRisksRequest(page_size=50), metadata=metadata, timeout=60
        )
        return 1

    async def check() -> int:
        await health.Check(health_pb2.HealthCheckRequest(service=SERVICES["analytics"]), timeout=60)
        return 1

    try:
        _progress(f"risk reads: {len(chosen):,} pseudonyms cold, then warm; {list_calls} first pages")
        cold = await timed_calls("GetSubjectRisk, cold", [get(p) for p in chosen], concurrency=concurrency)
        again = random.Random(12).sample(chosen, len(chosen))
        warm = await timed_calls("GetSubjectRisk, warm", [get(p) for p in again], concurrency=concurrency)
        listing = await timed_calls(
            "ListSubjectRisks first page", [first_page] * max(1, list_calls), concurrency=concurrency
        )
        baseline = await timed_calls("health check", [check] * len(chosen), concurrency=concurrency)
    finally:
        await channel.close()
    return cold, warm, listing, baseline


async def weekly_reports(suite: AnalyticsSuite, formats: Sequence[str]) -> list[ReportRun]:
    """The last complete week's report in each format, issued by the service's ReportIssuer in this
    process (on the same database, calling the running signing and ingest); where issuing fails,
    built and rendered only (said in the row)."""
    from awareness.ingest.v1 import ingest_pb2_grpc
    from awareness.signing.v1 import signing_pb2_grpc

    from services.analytics import rendering
    from services.analytics.app import build_service
    from services.analytics.reports import ReportIssuer, last_complete_week
    from services.runtime.config import load_settings
    from services.runtime.server import build_context

    context = build_context(load_settings("analytics", suite.env("analytics")))
    service = build_service(context)
    assert context.sessions is not None
    issuer = ReportIssuer(
        operations=service.operations,
        sessions=context.sessions,
        ingest=lambda: ingest_pb2_grpc.IngestServiceStub(context.channels.channel("ingest")),
        signing=lambda: signing_pb2_grpc.SigningServiceStub(context.channels.channel("signing")),
    )
    week = last_complete_week(datetime.now(UTC))
    runs = []
    try:
        for fmt in formats:
            _progress(f"weekly report {week} as {fmt}")
            started = time.perf_counter()
            try:
                issued = await issuer.issue(period=week, fmt=fmt, created_by="bench")
                runs.append(
                    ReportRun(
                        fmt,
                        time.perf_counter() - started,
                        issued.build_seconds,
                        issued.render_seconds,
                        issued.evidence_seconds,
                        issued.row.size_bytes,
                        week,
                        -1,  # counted below, outside the clock
                        "issued",
                    )
                )
            except Exception as error:
                _progress(f"issuing failed ({type(error).__name__}: {error}); building and rendering only")
                began = time.perf_counter()
                report = await issuer.build(week)
                built_at = time.perf_counter()
                content = await asyncio.to_thread(rendering.render, report, fmt)
                done = time.perf_counter()
                runs.append(
                    ReportRun(
                        fmt,
                        done - began,
                        built_at - began,
                        done - built_at,
                        0.0,
                        len(content),
                        week,
                        len(report.funnels),
                        f"built and rendered ({type(error).__name__})",
                    )
                )
        if any(report.campaigns < 0 for report in runs):
            campaigns = len((await issuer.build(week)).funnels)
            runs = [
                report if report.campaigns >= 0 else dataclasses.replace(report, campaigns=campaigns)
                for report in runs
            ]
    finally:
        await context.channels.close()
        if context.engine is not None:
            context.engine.dispose()
    return runs


def _progress(message: str) -> None:
    print(f"bench analytics: {message}", file=sys.stderr, flush=True)


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine(database_url: str | None) -> str:
    """Architecture, cores, memory, Python and the database server, as the README's tables say them."""
    memory = ""
    with contextlib.suppress(OSError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.0f} GiB"
    database = "SQLite"
    if database_url is not None:
        with contextlib.suppress(Exception):
            from sqlalchemy import create_engine, text

            engine = create_engine(database_url)
            with engine.connect() as connection:
                version = str(connection.execute(text("SHOW server_version")).scalar())
            engine.dispose()
            database = f"PostgreSQL {version.split()[0]}"
    return (
        f"{platform.machine()}, {os.cpu_count()} cores{memory}, Python {platform.python_version()},"
        f" {database}"
    )


# --- the table ----------------------------------------------------------------------------------


def _ratio(value: float, against: float) -> str:
    return f"{value / against:.2f}x" if against and not math.isnan(value) else "-"


def table_rows(figures: Figures) -> list[tuple[str, str, str, str, str, str]]:
    """(measure, measured, target, measured / target, baseline from the same run, measured / baseline)."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    target = f"{TARGET_FACTS_PER_SECOND:,.0f} facts/s"
    folds = [
        (figures.fold_cold, figures.insert_cold, "cold (until every person is first seen)"),
        *(
            [(figures.fold_warm, figures.insert_warm, "warm")]
            if figures.fold_warm and figures.insert_warm
            else []
        ),
        (fold_total(figures), insert_total(figures), "all"),
    ]
    for fold_run, insert_run, label in folds:
        rows.append(
            (
                f"fold rate, {label}: {fold_run.items:,} facts in {fold_run.calls:,} batches, facts/s",
                f"{fold_run.per_second:,.0f}",
                target,
                _ratio(fold_run.per_second, TARGET_FACTS_PER_SECOND),
                f"plain INSERT {insert_run.per_second:,.0f}",
                _ratio(fold_run.per_second, insert_run.per_second),
            )
        )
        rows.append(
            (
                f"RecordEvents ({figures.batch}/batch), {label}, p50 / p99 ms",
                f"{fold_run.p50_ms:.0f} / {fold_run.p99_ms:.0f}",
                "-",
                "-",
                f"plain INSERT {insert_run.p50_ms:.0f} / {insert_run.p99_ms:.0f}",
                _ratio(fold_run.p50_ms, insert_run.p50_ms),
            )
        )
    health = figures.health
    for run in (figures.risk_cold, figures.risk_warm, figures.listing):
        label = {
            figures.risk_cold.name: "GetSubjectRisk, cold (first call per pseudonym)",
            figures.risk_warm.name: "GetSubjectRisk, warm (second call)",
        }.get(run.name, "ListSubjectRisks, first page of 50")
        if run.errors:
            label += f" ({', '.join(f'{n} {code}' for code, n in run.errors.items())})"
        rows.append(
            (
                f"{label}, p50 / p99 ms",
                f"{run.p50_ms:.1f} / {run.p99_ms:.1f}",
                f"p99 < {TARGET_RISK_P99_MS:.0f}",
                _ratio(run.p99_ms, TARGET_RISK_P99_MS),
                f"health check {health.p50_ms:.1f} / {health.p99_ms:.1f}",
                _ratio(run.p50_ms, health.p50_ms),
            )
        )
        rows.append(
            (
                f"{label}, requests/s ({run.calls:,} calls, {figures.query_concurrency} callers)",
                f"{run.per_second:,.0f}",
                "-",
                "-",
                f"health check {health.per_second:,.0f}",
                _ratio(run.per_second, health.per_second),
            )
        )
    for report in figures.reports:
        rows.append(
            (
                f"weekly report {report.week} ({report.campaigns} campaign(s)), {report.format},"
                f" {report.how}: build {report.build_seconds:.2f} + render {report.render_seconds:.2f}"
                f" + time-stamp and log {report.evidence_seconds:.2f} s, {report.size_bytes / 1024:,.0f} KiB",
                f"{report.seconds:.2f} s",
                f"< {TARGET_REPORT_SECONDS:.0f} s",
                _ratio(report.seconds, TARGET_REPORT_SECONDS),
                "-",
                "-",
            )
        )
    return rows


def format_table(figures: Figures) -> str:
    counts = figures.fold_counts
    lines = [
        f"analytics benchmark, {figures.date}, {figures.machine}",
        f"real signing, gdpr, ingest and analytics processes on {figures.backend}; {figures.events:,} facts"
        f" about {figures.subjects:,} people in {DEPARTMENTS} departments, 13 weeks, {CAMPAIGNS} campaigns;"
        f" {figures.concurrency} sender(s) of {figures.batch}-fact batches; folded {counts.folded:,},"
        f" duplicates {counts.duplicates:,}, excluded {counts.excluded:,}; load average {figures.load}",
        "",
        "| measure | measured | target | measured / target | baseline (same run) | measured / baseline |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(figures)]
    lines.append(
        "(fold: measured / target > 1 meets it; latency and report: measured / target < 1 meets it."
        " Baselines: a plain INSERT of the same facts' rows, same batches and senders; the analytics"
        " process's gRPC health check, same callers.)"
    )
    return "\n".join(lines)


def to_json(figures: Figures) -> dict[str, Any]:
    return {
        "benchmark": "analytics",
        "date": figures.date,
        "machine": figures.machine,
        "load_average": figures.load,
        "backend": figures.backend,
        "events": figures.events,
        "subjects": figures.subjects,
        "batch": figures.batch,
        "concurrency": figures.concurrency,
        "query_concurrency": figures.query_concurrency,
        "generate_seconds": round(figures.generate_seconds, 2),
        "fold_counts": asdict(figures.fold_counts),
        "steps": [
            run.summary()
            for run in (
                figures.fold_cold,
                *([figures.fold_warm] if figures.fold_warm else []),
                fold_total(figures),
                figures.insert_cold,
                *([figures.insert_warm] if figures.insert_warm else []),
                insert_total(figures),
                figures.risk_cold,
                figures.risk_warm,
                figures.listing,
                figures.health,
            )
        ],
        "reports": [asdict(report) for report in figures.reports],
        "targets": {
            "facts_per_second": TARGET_FACTS_PER_SECOND,
            "risk_p99_ms": TARGET_RISK_P99_MS,
            "report_seconds": TARGET_REPORT_SECONDS,
        },
        "table": table_rows(figures),
    }


# --- running ------------------------------------------------------------------------------------


async def _measure(suite: AnalyticsSuite, arguments: argparse.Namespace, backend: str) -> Figures:
    started = time.perf_counter()
    run = f"bench-{os.urandom(4).hex()}"
    _progress(f"creating {arguments.subjects:,} pseudonyms in gdpr")
    pseudonyms = await gdpr_pseudonyms(suite, arguments.subjects, namespace=f"{run}-")
    departments = departments_of(arguments.subjects, random.Random(3))
    _progress(f"generating {arguments.events:,} facts")
    planned = programme(events=arguments.events, subjects=arguments.subjects, now=datetime.now(UTC))
    requests = record_requests(
        planned, pseudonyms=pseudonyms, departments=departments, batch=arguments.batch, run=run
    )
    sizes = [min(arguments.batch, len(planned) - start) for start in range(0, len(planned), arguments.batch)]
    cold = cold_batches(planned, batch=arguments.batch)
    generated = time.perf_counter() - started
    fold_cold, fold_warm, counts = await fold(
        suite, requests, sizes=sizes, cold=cold, concurrency=arguments.concurrency
    )
    del requests
    risk_cold, risk_warm, listing, health = await risk_reads(
        suite,
        pseudonyms,
        queries=arguments.queries,
        list_calls=arguments.list_calls,
        concurrency=arguments.query_concurrency,
    )
    reports = await weekly_reports(suite, arguments.formats)
    _progress("baseline: a plain INSERT of the same rows")
    insert_cold, insert_warm = await plain_insert(
        suite.database_url or f"sqlite:///{suite.data_dir / 'plain-insert.db'}",
        _plain_rows(planned, pseudonyms, run),
        batch=arguments.batch,
        cold=cold,
        concurrency=arguments.concurrency,
    )
    return Figures(
        backend=backend,
        events=len(planned),
        subjects=arguments.subjects,
        batch=arguments.batch,
        concurrency=arguments.concurrency,
        query_concurrency=arguments.query_concurrency,
        fold_cold=fold_cold,
        fold_warm=fold_warm,
        fold_counts=counts,
        insert_cold=insert_cold,
        insert_warm=insert_warm,
        risk_cold=risk_cold,
        risk_warm=risk_warm,
        listing=listing,
        health=health,
        reports=reports,
        generate_seconds=generated,
    )


def run(arguments: argparse.Namespace) -> Figures:
    database = os.environ.get("DATABASE_URL", "")
    with contextlib.ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="awareness-bench-analytics-")))
        url: str | None = None
        backend = "SQLite (DATABASE_URL not set: the embedded default)"
        if database.startswith("postgresql"):
            url = stack.enter_context(_scratch_postgres(database))
            backend = "PostgreSQL (a scratch database)"
        load_at_start = load_average()
        suite = AnalyticsSuite(data_dir=data_dir, database_url=url)
        stack.callback(suite.stop)
        _progress("starting signing, gdpr, analytics and ingest")
        suite.start()
        figures = asyncio.run(_measure(suite, arguments, backend))
        figures.machine = machine(url)
        figures.load = f"{load_at_start:.2f} at the start, {load_average():.2f} at the end"
        if arguments.keep_logs:
            import shutil

            shutil.copytree(data_dir, arguments.keep_logs, dirs_exist_ok=True)
    return figures


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench analytics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="facts to fold (1,000,000)")
    parser.add_argument(
        "--subjects",
        type=int,
        default=DEFAULT_SUBJECTS,
        help=f"people the facts are about ({DEFAULT_SUBJECTS:,})",
    )
    parser.add_argument(
        "--batch", type=int, default=500, help="facts per RecordEvents call (500, as ingest's feed)"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="concurrent RecordEvents senders (2)")
    parser.add_argument(
        "--queries", type=int, default=1000, help="pseudonyms read with GetSubjectRisk (1,000)"
    )
    parser.add_argument("--list-calls", type=int, default=200, help="ListSubjectRisks first pages (200)")
    parser.add_argument("--query-concurrency", type=int, default=4, help="concurrent risk readers (4)")
    parser.add_argument(
        "--formats", nargs="+", default=["html", "pdf"], choices=("html", "pdf", "csv"), help="report formats"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=REPO / "bench-results",
        help="where the JSON result goes (bench-results/)",
    )
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the service logs here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    figures = run(arguments)
    print(format_table(figures))
    arguments.out_dir.mkdir(parents=True, exist_ok=True)
    path = arguments.out_dir / f"analytics-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(to_json(figures), indent=2, default=str) + "\n")
    print(f"(written to {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
