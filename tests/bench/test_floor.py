"""bench/floor.py: the floor answers only what it committed to PostgreSQL, as the suite would."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from awareness.ingest.v1 import ingest_pb2_grpc

from bench import suite
from bench.floor import TABLE, FloorStore, create_edge_app, libpq_url
from bench.loadgen import make_event
from tests.support.resources import free_port

HEADERS = {"Authorization": "Bearer k", "Content-Type": "application/json"}


def stored_ids(database_url: str) -> set[str]:
    with psycopg.connect(libpq_url(database_url)) as connection:
        return {row[0] for row in connection.execute(f"SELECT event_id FROM {TABLE}")}


@pytest.fixture
async def floor_client(fresh_postgres_db: str) -> AsyncIterator[httpx.AsyncClient]:
    """The edge app in process, sending to a real store server on a real port and database."""
    server = grpc.aio.server()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(FloorStore.connect(fresh_postgres_db), server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    transport = httpx.ASGITransport(app=create_edge_app(f"127.0.0.1:{port}"))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://floor.test") as client:
            yield client
    finally:
        await server.stop(grace=None)


async def test_an_event_is_answered_once_it_is_committed(
    floor_client: httpx.AsyncClient, fresh_postgres_db: str
) -> None:
    event = make_event(3, namespace="floor-")
    answer = await floor_client.post("/v1/events", content=json.dumps(event), headers=HEADERS)
    assert answer.status_code == 200
    assert answer.json() == {
        "receipt": {"eventId": event["eventId"], "state": "STATE_ACCEPTED"},
        "replayed": False,
    }
    assert stored_ids(fresh_postgres_db) == {event["eventId"]}


async def test_a_batch_gets_one_receipt_per_event_in_order(
    floor_client: httpx.AsyncClient, fresh_postgres_db: str
) -> None:
    events = [make_event(i, namespace="floor-") for i in range(3)]
    answer = await floor_client.post(
        "/v1/events:batchAppend", content=json.dumps({"events": events}), headers=HEADERS
    )
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2]
    assert [r["receipt"]["eventId"] for r in results] == [e["eventId"] for e in events]
    assert stored_ids(fresh_postgres_db) == {e["eventId"] for e in events}


async def test_the_floor_refuses_what_the_gateway_would_not_parse(
    floor_client: httpx.AsyncClient, fresh_postgres_db: str
) -> None:
    bad = [
        ("/v1/events", b"{"),
        ("/v1/events", json.dumps({**make_event(1), "subject": ""}).encode()),
        ("/v1/events", json.dumps({**make_event(1), "occurredAt": "yesterday"}).encode()),
        ("/v1/events:batchAppend", json.dumps({"events": []}).encode()),
        ("/v1/events:batchAppend", json.dumps({"events": [make_event(2)] * 501}).encode()),
    ]
    for path, body in bad:
        assert (await floor_client.post(path, content=body, headers=HEADERS)).status_code == 400, body[:60]
    assert stored_ids(fresh_postgres_db) == set()


def test_the_suite_runs_the_floor_as_two_processes_on_its_database(
    tmp_path: Path, fresh_postgres_db: str
) -> None:
    event = make_event(9, namespace="floor-")
    with suite.floor_servers(tmp_path, fresh_postgres_db) as (url, pids):
        answer = httpx.post(f"{url}/v1/events", content=json.dumps(event), headers=HEADERS, timeout=10)
        assert set(pids) == {"edge", "store"}
    assert answer.status_code == 200
    assert stored_ids(fresh_postgres_db) == {event["eventId"]}
