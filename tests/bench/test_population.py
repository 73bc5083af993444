"""bench/population.py: who the events are about, cold (never seen) or warm (seen, cache expired)."""

from __future__ import annotations

import argparse

from bench.population import (
    KEY_CACHE_VARIABLE,
    Population,
    add_arguments,
    describe,
    first_sight_share,
    ingest_key_cache_seconds,
    run_namespace,
    subject_address,
    temperatures,
    warm_ready_at,
)
from services.ingest.app import IngestSettings


def test_events_cycle_through_the_population_in_order() -> None:
    subjects = [subject_address(i, subjects=5000) for i in range(10_000)]
    assert len(set(subjects)) == 5000
    # At 1,000 events/s a person recurs every 5 s: event i and i + 5,000 are about the same one.
    assert subjects[17] == subjects[5017] != subjects[18]


def test_each_cold_step_meets_people_nobody_has_seen() -> None:
    run = Population(5000, run_namespace())
    cold, again = run.step("r500"), run.step("r1000")
    assert cold.subject(3) != again.subject(3)
    assert {cold.subject(i) for i in range(5000)}.isdisjoint({again.subject(i) for i in range(5000)})
    assert Population(5000, run_namespace()).step("r500").subject(3) != cold.subject(3)  # nor earlier runs
    assert cold.subject(3) == cold.subject(5003)  # a warm step reuses the namespace: the same people


def test_first_sight_share_is_the_part_of_a_step_that_meets_new_people() -> None:
    assert first_sight_share(5000, subjects=5000) == 1.0
    assert first_sight_share(10_000, subjects=5000) == 0.5
    assert first_sight_share(2500, subjects=5000) == 1.0
    assert first_sight_share(0, subjects=5000) == 0.0


def test_warm_steps_wait_past_the_key_cache_lifetime() -> None:
    assert warm_ready_at(100.0, key_cache_seconds=60.0) == 161.0
    assert ingest_key_cache_seconds({}) == IngestSettings(fingerprint_secret=b"").key_cache_seconds
    assert ingest_key_cache_seconds({KEY_CACHE_VARIABLE: "5"}) == 5.0


def test_cold_and_warm_flags_default_to_both() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for argv, expected in (
        ([], ("cold", "warm")),
        (["--cold"], ("cold",)),
        (["--warm"], ("warm",)),
        (["--cold", "--warm"], ("cold", "warm")),
    ):
        args = parser.parse_args(argv)
        assert temperatures(cold=args.cold, warm=args.warm) == expected
    assert parser.parse_args([]).subjects == 5000


def test_labels_say_how_much_of_a_cold_step_was_first_sight() -> None:
    assert describe(5000, "cold", events=5000) == "5,000 people, cold"
    assert describe(5000, "cold", events=10_000) == "5,000 people, cold (50% first sight)"
    assert describe(5000, "warm", events=10_000) == "5,000 people, warm"
