"""History aggregates as of an event: only events strictly before it count."""

from __future__ import annotations

import pytest

from services.ingest.domain.history import DAY_US, PriorEvent, subject_history

HOUR_US = DAY_US // 24
T = 1_800_000_000 * 1_000_000


def prior(
    hours_before: float, kind: str = "phishing.clicked", source: str = "gophish", violating: bool = False
) -> PriorEvent:
    return PriorEvent(T - int(hours_before * HOUR_US), kind, source, violating)


def test_windows_count_only_earlier_events() -> None:
    window = [
        prior(1, "login.failed", "okta"),
        prior(2, "password.reset", "okta", violating=True),
        prior(23, source="gophish"),
        prior(30, violating=True),  # outside 24 h, inside 7 d
        prior(24 * 10, violating=True),  # outside 7 d, inside 30 d
        prior(24 * 40, violating=True),  # outside 30 d: counts for nothing but "previous"
        prior(-1),  # later than the event: ignored
        prior(0),  # same instant: not before it
    ]
    history = subject_history(
        occurred_at_us=T,
        source="okta",
        window=window,
        source_first_seen_us={"okta": T - 2 * HOUR_US},
        latest_before_window_us=None,
    )
    assert history.events_24h == 3
    assert history.events_7d == 4
    assert history.violations_30d == 3
    assert history.distinct_sources_24h == 2
    assert history.failed_logins_24h == 2
    assert not history.source_is_new
    assert history.seconds_since_previous_event == pytest.approx(3600)


def test_first_event_and_previous_before_the_window() -> None:
    empty = subject_history(
        occurred_at_us=T, source="edr", window=[], source_first_seen_us={}, latest_before_window_us=None
    )
    assert (empty.events_24h, empty.source_is_new, empty.seconds_since_previous_event) == (0, True, -1.0)
    old = subject_history(
        occurred_at_us=T,
        source="edr",
        window=[prior(24 * 45)],
        source_first_seen_us={"edr": T},
        latest_before_window_us=T - 50 * DAY_US,
    )
    assert old.source_is_new  # first seen at this very instant: not before
    assert old.seconds_since_previous_event == pytest.approx(45 * 86_400)
    assert old.as_facts()["source_is_new"] == 1.0
