from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.scoring.domain.features import FeatureInput, is_outside_working_hours
from services.scoring.domain.generator import (
    BENIGN,
    DATA_CARD_VERSION,
    GeneratorConfig,
    HistoryAggregator,
    RawEvent,
    generate,
)

SMALL = GeneratorConfig(people=60, days=21, seed=3)
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def raw(event_type: str, at: datetime, *, source: str = "idp", subject: str = "subject-a") -> RawEvent:
    return RawEvent(
        subject=subject,
        persona=BENIGN,
        event_type=event_type,
        source=source,
        severity=1,
        occurred_at=at,
        summary_length=50,
        detail_count=0,
        risky=False,
    )


def test_same_config_gives_the_same_dataset_and_another_seed_does_not() -> None:
    first, second = generate(SMALL), generate(SMALL)
    assert first.inputs == second.inputs
    assert first.labels == second.labels
    other = generate(replace(SMALL, seed=4))
    assert other.inputs != first.inputs


def test_dataset_is_labelled_time_ordered_and_has_both_classes() -> None:
    dataset = generate(SMALL)
    assert dataset.version == DATA_CARD_VERSION
    assert len(dataset.inputs) == len(dataset.labels) == len(dataset.events) > 500
    assert {0, 1} == set(dataset.labels)
    times = [event.occurred_at for event in dataset.events]
    assert times == sorted(times)
    assert min(times) >= SMALL.start  # warm-up events only build history
    # Severities follow ingest's enum: 1 info .. 5 critical, never 0 (unspecified).
    assert {item.severity for item in dataset.inputs} <= {1, 2, 3, 4, 5}
    # Risky personas are a minority of people and of events.
    summary = dataset.summary()
    assert 0.05 < float(summary["positive_rate"]) < 0.4  # type: ignore[arg-type]


def test_label_noise_flips_about_the_configured_share() -> None:
    clean = generate(replace(SMALL, label_noise=0.0))
    assert clean.labels == clean.true_labels
    noisy = generate(replace(SMALL, label_noise=0.1))
    flipped = sum(a != b for a, b in zip(noisy.labels, noisy.true_labels, strict=True))
    assert 0.07 < flipped / len(noisy.labels) < 0.13
    assert noisy.true_labels == clean.true_labels


def test_risky_patterns_show_in_the_features() -> None:
    dataset = generate(SMALL)
    risky = [item for item, label in zip(dataset.inputs, dataset.true_labels, strict=True) if label]
    benign = [item for item, label in zip(dataset.inputs, dataset.true_labels, strict=True) if not label]
    # Risky uploads are mostly off hours, benign ones mostly during work.
    risky_uploads = [item for item in risky if item.event_type == "data.external_upload"]
    benign_uploads = [item for item in benign if item.event_type == "data.external_upload"]
    assert risky_uploads and benign_uploads

    def off_hours_share(items: list[FeatureInput]) -> float:
        off_hours = [is_outside_working_hours(item.occurred_at) for item in items]
        return sum(off_hours) / len(off_hours)

    assert off_hours_share(risky_uploads) > 0.5 > off_hours_share(benign_uploads)


def test_aggregator_counts_only_earlier_events_of_the_same_subject() -> None:
    aggregator = HistoryAggregator()
    first = aggregator.observe(raw("login.failed", T0))
    assert (first.events_24h, first.source_is_new, first.seconds_since_previous_event) == (0, True, -1.0)
    aggregator.observe(raw("login.failed", T0 + timedelta(minutes=1)))
    aggregator.observe(raw("phishing.clicked", T0 + timedelta(hours=2), source="gophish"))
    aggregator.observe(raw("login.failed", T0 + timedelta(hours=3), subject="subject-b"))
    current = aggregator.observe(raw("mfa.disabled", T0 + timedelta(hours=3)))
    assert current.events_24h == 3
    assert current.events_7d == 3
    assert current.failed_logins_24h == 2
    assert current.violations_30d == 1  # the click
    assert current.distinct_sources_24h == 2
    assert current.source_is_new is False
    assert current.seconds_since_previous_event == 3600.0
    # Two days later the 24-hour window is empty but the 7-day one still holds everything.
    later = aggregator.observe(raw("device.usb_inserted", T0 + timedelta(days=2), source="edr"))
    assert (later.events_24h, later.events_7d, later.failed_logins_24h) == (0, 4, 0)
    assert later.violations_30d == 2  # the click and the MFA switch-off
    assert later.source_is_new is True
    # After 31 days the 30-day window has forgotten the violations.
    month_later = aggregator.observe(raw("login.failed", T0 + timedelta(days=33)))
    assert (month_later.violations_30d, month_later.events_7d) == (0, 0)


def test_aggregator_refuses_events_out_of_time_order() -> None:
    aggregator = HistoryAggregator()
    aggregator.observe(raw("login.failed", T0))
    with pytest.raises(ValueError, match="time order"):
        aggregator.observe(raw("login.failed", T0 - timedelta(seconds=1)))


@pytest.mark.parametrize(
    "config",
    [GeneratorConfig(people=0), GeneratorConfig(days=0), GeneratorConfig(label_noise=0.6)],
)
def test_invalid_configs_are_refused(config: GeneratorConfig) -> None:
    with pytest.raises(ValueError):
        generate(config)
