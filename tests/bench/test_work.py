"""bench/work.py: ingest's own append work per event, measured in process."""

from __future__ import annotations

import asyncio

import pytest
from awareness.ingest.v1 import ingest_pb2

from bench import work


def test_the_work_of_accepted_events_is_measured_per_event() -> None:
    spent = work.ingest_work_ms(events_per_call=10, subjects=50, rounds=1, events=200)
    assert 0 < spent < 1000


def test_a_refused_event_stops_the_measure_rather_than_flatter_it() -> None:
    servicer = work.in_process_servicer()
    [good] = work._requests(1, 3, subjects=50, start=0)
    request = ingest_pb2.AppendEventsRequest.FromString(good)
    assert asyncio.run(work._round(servicer, [good])) >= 0
    request.events[1].type = "no.such.type"
    with pytest.raises(RuntimeError, match="refused"):
        asyncio.run(work._round(servicer, [request.SerializeToString()]))
