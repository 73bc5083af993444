"""Who the benchmarks' events are about: a population of people, seen cold or warm.

Events cycle through ``subjects`` people in order (event ``i`` is about person ``i % subjects``),
so at 1,000 events/s over 5,000 people a person recurs every 5 s, as in a real tenant.

- cold: first sight of every person. Each measured step gets its own namespace (a prefix of the
  subject address, unique to the run), so nobody in it has a key yet and gdpr must create one.
  A step with more events than people sees each person first, then again: ``first_sight_share``
  says how much of the step was first sight.
- warm: the same people seen before, their keys in gdpr, but ingest's in-process key cache
  expired: the step reuses a namespace that was touched at least ``key cache lifetime + 1 s``
  earlier (``warm_ready_at``).
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

DEFAULT_SUBJECTS = 5000
Temperature = Literal["cold", "warm"]
TEMPERATURES: tuple[Temperature, ...] = ("cold", "warm")


def subject_address(sequence: int, *, subjects: int, namespace: str = "") -> str:
    """The person event ``sequence`` is about: one of ``subjects`` people in ``namespace``."""
    return f"{namespace}user-{sequence % subjects}@example.org"


def first_sight_share(events: int, *, subjects: int) -> float:
    """The share of ``events`` that meet their person for the first time (fresh namespace)."""
    if events <= 0:
        return 0.0
    return min(events, subjects) / events


def run_namespace() -> str:
    """A prefix unique to this run: its people have never been seen by any earlier run."""
    return f"b{secrets.token_hex(4)}-"


@dataclass(frozen=True)
class Population:
    subjects: int
    namespace: str

    def subject(self, sequence: int) -> str:
        return subject_address(sequence, subjects=self.subjects, namespace=self.namespace)

    def step(self, name: str) -> Population:
        """The same number of people, in a namespace of their own (nobody seen before)."""
        return Population(self.subjects, f"{self.namespace}{name}-")


def warm_ready_at(touched_at: float, *, key_cache_seconds: float) -> float:
    """When a population touched at ``touched_at`` has left ingest's key cache (monotonic clock)."""
    return touched_at + key_cache_seconds + 1.0


def temperatures(*, cold: bool, warm: bool) -> tuple[Temperature, ...]:
    """``--cold``/``--warm`` as given; neither means both."""
    chosen = tuple(t for t, wanted in zip(TEMPERATURES, (cold, warm), strict=True) if wanted)
    return chosen or TEMPERATURES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--subjects``, ``--cold`` and ``--warm``, the same on every benchmark that sends events."""
    parser.add_argument(
        "--subjects",
        type=int,
        default=DEFAULT_SUBJECTS,
        help=f"people the events are about ({DEFAULT_SUBJECTS:,})",
    )
    parser.add_argument("--cold", action="store_true", help="measure first sight of every person")
    parser.add_argument(
        "--warm", action="store_true", help="measure people seen before, ingest's key cache expired"
    )


def describe(subjects: int, temperature: Temperature, *, events: int | None = None) -> str:
    """A row label's population part, e.g. ``5,000 people, cold (50% first sight)``."""
    label = f"{subjects:,} people, {temperature}"
    if temperature == "cold" and events is not None and events > subjects:
        label += f" ({first_sight_share(events, subjects=subjects):.0%} first sight)"
    return label


KEY_CACHE_VARIABLE = "AWARENESS_INGEST_KEY_CACHE_SECONDS"
# Ingest's key-cache lifetime while benchmarked. A warm step waits it out after the cold one, so
# the service's own default (minutes) would stall a run; any lifetime well above a person's
# recurrence (5 s at 1,000 events/s over 5,000 people) leaves the cold steps unchanged.
BENCH_KEY_CACHE_SECONDS = 60.0


def ingest_key_cache_seconds(env: Mapping[str, str]) -> float:
    """How long ingest keeps a person's key in memory, for the environment it runs with."""
    from services.ingest.app import IngestSettings
    from services.runtime.config import env_float

    default = next(f.default for f in dataclasses.fields(IngestSettings) if f.name == "key_cache_seconds")
    assert isinstance(default, float)
    return env_float(env, KEY_CACHE_VARIABLE, default)
