"""docs/architecture.md "When a dependency fails", row by row, under steady load through the gateway.

Each test offers open-loop load, stops one dependency (SIGKILL a service, kill the private
redis-server, or cut the PostgreSQL proxy), keeps the load up, brings the dependency back,
then checks what the table promises while it was down, that the caller's circuit breaker
opened and closed again (from /metrics), that pending metadata was back-filled, and that
every acknowledged event is in the log exactly once. The last test verifies the whole log.

The "upstream TSA" row is the signing service's own test (tests/signing/test_upstream_tsa.py).
Loads are small (10 req/s) and every wait is bounded: the module stays within CI's budget.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bench.loadgen import LoadConfig, Outcome, make_event
from tests.resilience.conftest import FaultSuite
from tests.resilience.harness import (
    BackgroundLoad,
    http_json,
    list_all_events,
    metric_value,
    parse_metrics,
    wait_until,
)

# The first test also pays for starting the suite and for scoring's first model (bounded below).
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

RATE = 10.0
BEFORE_SECONDS = 3.0
DOWN_SECONDS = 8.0
AFTER_SECONDS = 7.0
SCORED = {"SCORING_STATE_SCORED", "SCORING_STATE_SKIPPED"}
EVALUATED = {"EVALUATION_STATE_EVALUATED", "EVALUATION_STATE_SKIPPED"}


@dataclass
class Episode:
    """One outage under load: every outcome, when the dependency went and came back."""

    outcomes: list[Outcome]
    down_at: float
    up_at: float
    probes: dict[str, Any] = field(default_factory=dict)

    def sent_between(self, start: float, end: float) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.sent_at < end]

    @property
    def acknowledged_ids(self) -> list[str]:
        return [o.event_id for o in self.outcomes if o.acknowledged]


def run_episode(
    fs: FaultSuite,
    *,
    stop: Callable[[], None],
    start: Callable[[], None],
    during: Callable[[BackgroundLoad, float], dict[str, Any]] | None = None,
) -> Episode:
    config = LoadConfig(
        url=fs.suite.gateway_url,
        api_key=fs.api_key,
        rate=RATE,
        seconds=240,  # an upper bound; the episode stops the load itself
        connections=8,
        timeout_seconds=15,
    )
    load = BackgroundLoad(config).start()
    probes: dict[str, Any] = {}
    try:
        time.sleep(BEFORE_SECONDS)
        down_at = time.time()
        stop()
        if during is not None:
            probes = during(load, down_at)
        time.sleep(max(0.0, down_at + DOWN_SECONDS - time.time()))
        start()
        up_at = time.time()
        time.sleep(AFTER_SECONDS)
    finally:
        result = load.stop()
    for outcome in result.outcomes:
        if outcome.acknowledged:
            fs.acknowledged[outcome.event_id] = outcome.receipt or {}
    return Episode(outcomes=result.outcomes, down_at=down_at, up_at=up_at, probes=probes)


# --- metrics ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerReading:
    opened: float
    closed: float
    state: float


def breaker(fs: FaultSuite, *, caller: str, target: str) -> BreakerReading:
    samples = parse_metrics(fs.suite.scrape(caller))
    transitions = f"awareness_{caller}_circuit_breaker_transitions_total"
    return BreakerReading(
        opened=metric_value(samples, transitions, target=target, state="open"),
        closed=metric_value(samples, transitions, target=target, state="closed"),
        state=metric_value(samples, f"awareness_{caller}_circuit_breaker_state", target=target),
    )


def assert_breaker_cycled(fs: FaultSuite, *, caller: str, target: str, before: BreakerReading) -> None:
    """It opened during the outage and is closed again now (0 closed, 1 half-open, 2 open)."""

    def closed_again() -> BreakerReading | None:
        now = breaker(fs, caller=caller, target=target)
        return now if now.state == 0 and now.closed > before.closed else None

    now = breaker(fs, caller=caller, target=target)
    assert now.opened > before.opened, f"{caller}'s breaker for {target} never opened: {before} -> {now}"
    wait_until(closed_again, timeout=60, interval=0.5, what=f"{caller}'s breaker for {target} to close")


# --- the log ------------------------------------------------------------------------------


def events_by_id(fs: FaultSuite) -> tuple[dict[str, dict[str, Any]], Counter[str]]:
    events = list_all_events(fs.suite.gateway_url, api_key=fs.api_key)
    counts = Counter(str(e.get("eventId")) for e in events)
    return {str(e.get("eventId")): e for e in events}, counts


def assert_present_exactly_once(fs: FaultSuite, ids: list[str]) -> dict[str, dict[str, Any]]:
    events, counts = events_by_id(fs)
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    missing = sorted(i for i in ids if counts[i] == 0)
    assert not duplicated, f"events listed more than once: {duplicated[:5]}"
    assert not missing, f"{len(missing)} of {len(ids)} acknowledged events are missing: {missing[:5]}"
    return events


def wait_backfilled(fs: FaultSuite, ids: list[str], *, timeout: float = 90.0) -> None:
    """Every event's score and evaluation is filled (not PENDING, not FAILED)."""
    last: dict[str, Any] = {}

    def filled() -> bool:
        events, _ = events_by_id(fs)
        unfinished = {}
        for event_id in ids:
            metadata = events.get(event_id, {}).get("metadata", {})
            scoring, evaluation = metadata.get("scoringState"), metadata.get("evaluationState")
            if scoring not in SCORED or evaluation not in EVALUATED:
                unfinished[event_id] = (scoring, evaluation, metadata.get("scoringNote", ""))
        last.clear()
        last.update(unfinished)
        return not unfinished

    try:
        wait_until(filled, timeout=timeout, interval=1.0, what="pending scores and evaluations to back-fill")
    except AssertionError as exc:
        sample = list(last.items())[:3]
        raise AssertionError(f"{exc}: {len(last)} of {len(ids)} still unfinished, e.g. {sample}") from None


def get_event(fs: FaultSuite, event_id: str) -> tuple[int, Any]:
    return http_json("GET", f"{fs.suite.gateway_url}/v1/events/{event_id}", api_key=fs.api_key)


def latest_acknowledged(load: BackgroundLoad, *, after: float, timeout: float = 5.0) -> Outcome:
    def find() -> Outcome | None:
        fresh = [o for o in load.outcomes if o.acknowledged and o.sent_at >= after]
        return fresh[-1] if fresh else None

    found: Outcome = wait_until(
        find, timeout=timeout, interval=0.1, what="an event acknowledged during the outage"
    )
    return found


def refusals(outcomes: list[Outcome]) -> list[tuple[int, str]]:
    return [(o.status, o.reason) for o in outcomes if not o.acknowledged]


def append_one(fs: FaultSuite) -> int:
    status, _ = http_json("POST", f"{fs.suite.gateway_url}/v1/events", api_key=fs.api_key, body=make_event(0))
    return status


def assert_recovered(fs: FaultSuite, episode: Episode) -> None:
    """The suite heals by itself: with no intervention, a new event is accepted again (bounded wait).

    How long that took is printed (a measurement, not an assertion).
    """
    wait_until(
        lambda: append_one(fs) == 200, timeout=60, interval=0.5, what="the suite to accept events again"
    )
    late = [o for o in episode.outcomes if o.sent_at >= episode.up_at and not o.acknowledged]
    recovery = max((o.sent_at for o in late), default=episode.up_at) - episode.up_at
    statuses = Counter(f"{o.status} {o.reason}".strip() for o in episode.outcomes)
    print(
        f"outcomes: {dict(statuses)}; down {episode.up_at - episode.down_at:.1f}s; "
        f"last refusal {recovery:.1f}s after the dependency was back"
    )


# --- the rows -----------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["scoring", "policy"])
def test_scoring_or_policy_down_events_accepted_pending_then_backfilled(
    fault_suite: FaultSuite, service: str
) -> None:
    fs = fault_suite
    fs.suite.wait_healthy()
    before = breaker(fs, caller="ingest", target=service)
    state_field = "scoringState" if service == "scoring" else "evaluationState"

    def during(load: BackgroundLoad, down_at: float) -> dict[str, Any]:
        sample = latest_acknowledged(load, after=down_at + 1.0)
        _, body = get_event(fs, sample.event_id)
        return {"metadata_while_down": (body or {}).get("metadata", {})}

    episode = run_episode(
        fs,
        stop=lambda: fs.suite.kill(service),
        start=lambda: fs.suite.restart(service, timeout=90),
        during=during,
    )

    while_down = episode.sent_between(episode.down_at, episode.up_at)
    assert while_down, "no load was offered during the outage"
    assert refusals(while_down) == [], f"events refused while {service} was down"
    assert_recovered(fs, episode)
    metadata = episode.probes["metadata_while_down"]
    assert metadata.get(state_field, "").endswith("_PENDING"), metadata
    assert_breaker_cycled(fs, caller="ingest", target=service, before=before)
    wait_backfilled(fs, episode.acknowledged_ids)
    assert_present_exactly_once(fs, episode.acknowledged_ids)


def test_signing_down_events_integrated_checkpoints_wait_then_catch_up(fault_suite: FaultSuite) -> None:
    fs = fault_suite
    fs.suite.wait_healthy()
    before = breaker(fs, caller="ingest", target="signing")

    def during(load: BackgroundLoad, down_at: float) -> dict[str, Any]:
        sample = latest_acknowledged(load, after=down_at + 1.0)

        def integrated() -> dict[str, Any] | None:
            status, body = http_json(
                "GET", f"{fs.suite.gateway_url}/v1/events/{sample.event_id}/receipt", api_key=fs.api_key
            )
            return body if status == 200 and "leafIndex" in (body or {}) else None

        return {
            "receipt_while_down": wait_until(integrated, timeout=5, what="integration while signing is down")
        }

    episode = run_episode(
        fs,
        stop=lambda: fs.suite.kill("signing"),
        start=lambda: fs.suite.restart("signing", timeout=90),
        during=during,
    )

    while_down = episode.sent_between(episode.down_at, episode.up_at)
    assert while_down
    assert refusals(while_down) == [], "events refused while signing was down"
    assert_recovered(fs, episode)
    receipt = episode.probes["receipt_while_down"]
    assert receipt["state"] == "STATE_INTEGRATED", receipt
    assert "checkpoint" not in receipt, receipt
    assert_breaker_cycled(fs, caller="ingest", target="signing", before=before)

    ids = episode.acknowledged_ids

    def all_checkpointed() -> bool:
        events, _ = events_by_id(fs)
        return all(events.get(i, {}).get("receipt", {}).get("state") == "STATE_CHECKPOINTED" for i in ids)

    wait_until(all_checkpointed, timeout=60, interval=1.0, what="checkpoints to catch up")
    assert_present_exactly_once(fs, ids)


def test_gdpr_down_ingest_refuses_with_unavailable_and_reads_mark_personal_fields(
    fault_suite: FaultSuite,
) -> None:
    fs = fault_suite
    fs.suite.wait_healthy()
    before = breaker(fs, caller="ingest", target="gdpr")
    gateway_before = breaker(fs, caller="gateway", target="ingest")
    cache_expiry = 3.0  # ingest caches subject keys for 2 s in this suite

    def during(load: BackgroundLoad, down_at: float) -> dict[str, Any]:
        earlier = next(o for o in load.outcomes if o.acknowledged and o.sent_at < down_at)
        time.sleep(max(0.0, down_at + cache_expiry - time.time()))

        def read() -> tuple[int, Any] | None:
            status, body = get_event(fs, earlier.event_id)
            return (status, body) if status == 200 else None

        try:
            return {
                "read_while_down": wait_until(read, timeout=4, interval=0.3, what="a read while gdpr is down")
            }
        except AssertionError:
            return {"read_while_down": get_event(fs, earlier.event_id)}

    episode = run_episode(
        fs,
        stop=lambda: fs.suite.kill("gdpr"),
        start=lambda: fs.suite.restart("gdpr", timeout=90),
        during=during,
    )

    refused_window = episode.sent_between(episode.down_at + cache_expiry, episode.up_at)
    assert refused_window
    accepted = [o.event_id for o in refused_window if o.acknowledged]
    assert accepted == [], f"{len(accepted)} events accepted while gdpr was down"
    statuses = Counter(o.status for o in refused_window)
    assert set(statuses) == {503}, f"expected 503 UNAVAILABLE for every refusal, got {statuses}"
    status, body = episode.probes["read_while_down"]
    assert status == 200, f"GET an event while gdpr is down answered {status}: {body}"
    assert body["personalDataState"] == "PERSONAL_DATA_STATE_UNAVAILABLE", body
    assert "subject" not in body and "summary" not in body, body
    assert body["type"] and body["source"] and body["receipt"]["leafHash"], body
    assert_recovered(fs, episode)
    assert_breaker_cycled(fs, caller="ingest", target="gdpr", before=before)
    assert_present_exactly_once(fs, episode.acknowledged_ids)
    # Ingest stayed up and answered every call; only its dependency was down. If the gateway's
    # breaker for ingest opens on those answers, reads of ingest fail too (CIRCUIT_OPEN).
    gateway_after = breaker(fs, caller="gateway", target="ingest")
    assert gateway_after.opened == gateway_before.opened, (
        "the gateway's breaker for ingest opened because ingest answered UNAVAILABLE for gdpr: "
        f"{gateway_before} -> {gateway_after}"
    )


def test_redis_down_gateway_limits_in_process_and_counts_the_fallback(fault_suite: FaultSuite) -> None:
    fs = fault_suite
    fs.suite.wait_healthy()
    before = breaker(fs, caller="gateway", target="redis")
    fallback_name = "awareness_gateway_ratelimit_fallback_total"
    fallback_before = metric_value(parse_metrics(fs.suite.scrape("gateway")), fallback_name)

    def during(load: BackgroundLoad, down_at: float) -> dict[str, Any]:
        time.sleep(1.0)
        status, body = http_json(
            "GET", f"http://127.0.0.1:{fs.suite.gateway_admin_port}/health/dependencies", api_key=fs.api_key
        )
        return {"dependencies": (status, body)}

    episode = run_episode(fs, stop=fs.redis_down, start=fs.redis_up, during=during)

    while_down = episode.sent_between(episode.down_at, episode.up_at)
    assert while_down
    assert refusals(while_down) == [], "requests refused while Redis was down"
    assert_recovered(fs, episode)
    status, body = episode.probes["dependencies"]
    assert status == 200 and body["rate_limiter"]["degraded"] is True, body
    fallback_after = metric_value(parse_metrics(fs.suite.scrape("gateway")), fallback_name)
    assert fallback_after >= fallback_before + len(while_down) / 2, (fallback_before, fallback_after)
    assert_breaker_cycled(fs, caller="gateway", target="redis", before=before)
    assert_present_exactly_once(fs, episode.acknowledged_ids)


def test_database_down_services_not_serving_and_nothing_acknowledged_is_lost(fault_suite: FaultSuite) -> None:
    fs = fault_suite
    fs.suite.wait_healthy()

    def during(load: BackgroundLoad, down_at: float) -> dict[str, Any]:
        not_serving = wait_until(
            lambda: fs.suite.serving_status("ingest") == "NOT_SERVING",
            timeout=6,
            interval=0.2,
            what="ingest to report NOT_SERVING",
        )
        ready_status, _ = http_json("GET", f"{fs.suite.gateway_url}/health/ready")
        return {"ingest_not_serving": not_serving, "gateway_ready": ready_status}

    def bring_back() -> None:
        fs.database_proxy.up()
        fs.suite.wait_healthy(timeout=60)

    episode = run_episode(fs, stop=fs.database_proxy.down, start=bring_back, during=during)

    assert episode.probes["ingest_not_serving"] is True
    assert episode.probes["gateway_ready"] == 503
    # A store outage is UNAVAILABLE (503, retry later), never an unhandled INTERNAL error (500).
    statuses = Counter(f"{o.status} {o.reason}".strip() for o in episode.outcomes if not o.acknowledged)
    assert all(key.startswith(("503", "504")) for key in statuses), (
        f"refusals while the store was down: {statuses}"
    )
    assert_recovered(fs, episode)
    samples = parse_metrics(fs.suite.scrape("ingest"))
    assert metric_value(samples, "awareness_ingest_health_serving") == 1
    assert_present_exactly_once(fs, episode.acknowledged_ids)


def test_every_acknowledged_event_is_logged_once_and_the_whole_log_verifies(fault_suite: FaultSuite) -> None:
    fs = fault_suite
    fs.suite.wait_healthy()
    if not fs.acknowledged:  # run alone: make some history first
        run_episode(fs, stop=lambda: None, start=lambda: None)
    ids = sorted(fs.acknowledged)
    events = assert_present_exactly_once(fs, ids)

    def integrated() -> bool:
        events.update(events_by_id(fs)[0])
        return all("leafIndex" in events[i].get("receipt", {}) for i in ids)

    wait_until(integrated, timeout=60, interval=1.0, what="every acknowledged event to be integrated")
    leaf_indices = [int(events[i]["receipt"]["leafIndex"]) for i in ids]
    assert len(set(leaf_indices)) == len(leaf_indices), "two events share a leaf index"
    report = fs.suite.cli("verify", "--database", fs.direct_database_url, "--quiet", timeout=180)
    assert report.strip(), "verify printed no report"
