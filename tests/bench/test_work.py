"""bench/work.py: ingest's own append work per event, measured in process."""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

import pytest
from awareness.ingest.v1 import ingest_pb2

from bench import work
from services.ingest.api import IngestServicer
from services.ingest.app import IngestSettings
from services.ingest.service import LogWriter


def test_the_work_of_accepted_events_is_measured_per_event() -> None:
    spent = work.ingest_work_ms(events_per_call=10, subjects=50, rounds=1, events=200)
    assert 0 < spent < 1000


def test_a_refused_event_stops_the_measure_rather_than_flatter_it() -> None:
    settings = IngestSettings(fingerprint_secret=os.urandom(32))
    writer = LogWriter(
        sessions=cast(Any, None),
        keys=cast(Any, work._KnownKeys()),
        committer=cast(Any, work._FreeCommit()),
        fingerprint_secret=settings.fingerprint_secret,
        clock_skew=settings.clock_skew,
    )
    servicer = IngestServicer(writer=writer, reader=cast(Any, None), access=cast(Any, None))
    [good] = work._requests(1, 3, subjects=50, start=0)
    request = ingest_pb2.AppendEventsRequest.FromString(good)
    assert asyncio.run(work._round(servicer, [good])) >= 0
    request.events[1].type = "no.such.type"
    with pytest.raises(RuntimeError, match="refused"):
        asyncio.run(work._round(servicer, [request.SerializeToString()]))
