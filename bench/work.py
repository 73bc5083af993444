"""What ingest does for each event beyond the floor's store, measured in process.

The floor (bench/floor.py) answers ``AppendEvents`` after committing the events' bytes. Ingest also
validates each event, minimises and redacts its details, fingerprints, seals and hashes it, builds
its two rows and answers with its receipt. That work runs here through ingest's own servicer and
writer, on the load generator's events about 5,000 people, with every key already known and a
commit that costs nothing. No gRPC, no database, no enrichment: what is measured is a part of
ingest's cost that no deployment of this design avoids. The floor's store also parses the request
and builds receipts, and so does this measure (a few µs an event of both); apart from that overlap,
the floor plus this part is a lower bound on the gateway and ingest together.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import Any, cast

from awareness.ingest.v1 import ingest_pb2
from google.protobuf import json_format

from bench.loadgen import make_event
from bench.population import DEFAULT_SUBJECTS
from services.ingest.api import IngestServicer
from services.ingest.app import IngestSettings
from services.ingest.keys import KeyLookup, SubjectKey
from services.ingest.service import LogWriter, PendingRow

EVENTS_PER_ROUND = 10_000
ROUNDS = 5


class _KnownKeys:
    """Every subject's key already in the cache, as for people seen in the last 15 minutes."""

    def __init__(self) -> None:
        self._keys: dict[str, SubjectKey] = {}

    def all_cached(self, lookups: Sequence[KeyLookup]) -> bool:
        return True

    async def keys_for(self, lookups: Sequence[KeyLookup]) -> list[SubjectKey]:
        return [self._key(lookup.subject) for lookup in lookups]

    def _key(self, subject: str) -> SubjectKey:
        key = self._keys.get(subject)
        if key is None:
            pseudonym = uuid.uuid4().hex
            key = self._keys[subject] = SubjectKey(pseudonym, "2026-12", str(uuid.uuid4()), os.urandom(32))
        return key


class _FreeCommit:
    """Stores nothing and answers at once: the floor measures the commit."""

    async def submit(self, rows: list[PendingRow]) -> list[None]:
        return [None] * len(rows)


def _requests(calls: int, events_per_call: int, *, subjects: int, start: int) -> list[bytes]:
    """Serialised AppendEvents requests of the load generator's events (the gateway's parse of them
    is the floor's, not measured here)."""
    requests = []
    for call in range(calls):
        first = start + call * events_per_call
        events = [
            json_format.ParseDict(make_event(first + offset, subjects=subjects), ingest_pb2.Event())
            for offset in range(events_per_call)
        ]
        requests.append(ingest_pb2.AppendEventsRequest(events=events).SerializeToString())
    return requests


async def _round(servicer: IngestServicer, requests: list[bytes]) -> float:
    """CPU seconds for the servicer to answer every request, parsing and serialising included."""
    context = cast(Any, None)
    answers = []
    started = time.process_time()
    for body in requests:
        response = await servicer.AppendEvents(ingest_pb2.AppendEventsRequest.FromString(body), context)
        answers.append(response.SerializeToString())
    spent = time.process_time() - started
    for answer in answers:  # a refusal costs less than an append: it would flatter the figure
        refused = [
            r.error.message
            for r in ingest_pb2.AppendEventsResponse.FromString(answer).results
            if r.error.code
        ]
        if refused:
            raise RuntimeError(f"ingest refused the benchmark's events: {refused[0]}")
    return spent


def in_process_servicer() -> IngestServicer:
    """Ingest's servicer and writer with a deployment's default settings, every key known and a
    commit that costs nothing."""
    settings = IngestSettings(fingerprint_secret=os.urandom(32))
    writer = LogWriter(
        sessions=cast(Any, None),  # unused: no replay lookup while every key is cached
        keys=cast(Any, _KnownKeys()),
        committer=cast(Any, _FreeCommit()),
        fingerprint_secret=settings.fingerprint_secret,
        clock_skew=settings.clock_skew,
        undeclared_details=settings.undeclared_details,
        redaction=settings.redaction,
    )
    return IngestServicer(writer=writer, reader=cast(Any, None), access=cast(Any, None))


def ingest_work_ms(
    *,
    events_per_call: int = 50,
    subjects: int = DEFAULT_SUBJECTS,
    rounds: int = ROUNDS,
    events: int = EVENTS_PER_ROUND,
) -> float:
    """Median CPU ms per event of ingest's append work in process (module docstring), over `rounds`
    rounds of `events` events in calls of `events_per_call`, after one unmeasured round."""
    servicer = in_process_servicer()
    calls = max(1, events // events_per_call)
    seconds: list[float] = []
    for number in range(rounds + 1):
        requests = _requests(
            calls, events_per_call, subjects=subjects, start=number * calls * events_per_call
        )
        spent = asyncio.run(_round(servicer, requests))
        if number:  # the first round warms caches and code paths
            seconds.append(spent)
    return statistics.median(seconds) * 1000 / (calls * events_per_call)
