"""``python -m bench.floor``: the floor, what the suite's shape alone costs an event.

The suite's shape is an HTTP gateway in one Python process and the log's writer in another, which
answers only after a durable commit in PostgreSQL. The floor is that shape and nothing else:

- ``edge``: bench/edge.py's app under the gateway's uvicorn settings. It parses and checks the
  same body, builds the contract's ``Event`` with the gateway's own proto3 JSON parser, and sends
  concurrent requests together as one ``AppendEvents`` call (the gateway's coalescing).
- ``store``: a grpc.aio server of the contract's ``IngestService`` that answers ``AppendEvents``
  once the events are committed: concurrent calls share one transaction (ingest's group commit),
  one multi-row INSERT of id and bytes, then COMMIT.

No authentication, rate limit, TLS, interceptors, spans or metrics; no keys, sealing, hashing,
Merkle tree, enrichment or analytics. What the floor spends per event at a given load is what this
shape costs with these libraries on this machine before any of that work, so the CPU it leaves of
the machine's budget is what all of that work has to fit in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import grpc
import psycopg
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.edge import event_problem, problem_response, serve_as_the_gateway
from services.gateway.domain import protojson
from services.runtime.batching import Coalescer

TABLE = "bench_floor_events"
MAX_EVENTS_PER_CALL = 500  # the contract's limit on AppendEvents
CALLS_IN_FLIGHT = 2  # the gateway's coalescer keeps as many calls to ingest open


def libpq_url(database_url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg2://...``) as psycopg takes it."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class FloorStore(ingest_pb2_grpc.IngestServiceServicer):
    """AppendEvents answered after one shared commit per batch of concurrent calls."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection
        self._committer: Coalescer[ingest_pb2.Event, ingest_pb2.Receipt] = Coalescer(
            self._commit, max_items=MAX_EVENTS_PER_CALL
        )

    @classmethod
    def connect(cls, database_url: str) -> FloorStore:
        connection = psycopg.connect(libpq_url(database_url))
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (event_id text PRIMARY KEY, body bytea NOT NULL)"
        )
        connection.commit()
        return cls(connection)

    def _write(self, events: Sequence[ingest_pb2.Event]) -> None:
        with self._connection.transaction():
            self._connection.execute(
                f"INSERT INTO {TABLE} SELECT * FROM unnest(%s::text[], %s::bytea[]) ON CONFLICT DO NOTHING",
                ([event.event_id for event in events], [event.SerializeToString() for event in events]),
            )

    async def _commit(self, events: list[ingest_pb2.Event]) -> list[ingest_pb2.Receipt]:
        await asyncio.to_thread(self._write, events)  # as ingest: the loop goes on during the commit
        accepted = ingest_pb2.Receipt.STATE_ACCEPTED
        return [ingest_pb2.Receipt(event_id=event.event_id, state=accepted) for event in events]

    async def AppendEvents(  # noqa: N802 (the contract's name)
        self, request: ingest_pb2.AppendEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.AppendEventsResponse:
        receipts = await self._committer.submit(list(request.events))
        return ingest_pb2.AppendEventsResponse(
            results=[
                ingest_pb2.AppendEventResult(index=index, receipt=receipt)
                for index, receipt in enumerate(receipts)
            ]
        )


async def serve_store(*, host: str, port: int, database_url: str) -> None:
    server = grpc.aio.server()
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(FloorStore.connect(database_url), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def _json(value: Any) -> Response:
    return Response(json.dumps(value), media_type="application/json")


def create_edge_app(store_target: str) -> Starlette:
    """The edge app that forwards what it parsed to the store at ``store_target`` (host:port)."""
    stubs: list[ingest_pb2_grpc.IngestServiceStub] = []

    async def send(events: list[ingest_pb2.Event]) -> list[ingest_pb2.Receipt]:
        if not stubs:  # the channel belongs to the server's loop, so it is made on first use
            stubs.append(ingest_pb2_grpc.IngestServiceStub(grpc.aio.insecure_channel(store_target)))
        response = await stubs[0].AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        return [result.receipt for result in response.results]

    sender: Coalescer[ingest_pb2.Event, ingest_pb2.Receipt] = Coalescer(
        send, max_items=MAX_EVENTS_PER_CALL, max_running=CALLS_IN_FLIGHT
    )

    async def events_of(request: Request, *, batch: bool) -> list[ingest_pb2.Event] | str:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return "malformed JSON"
        values = body.get("events") if batch and isinstance(body, dict) else [body]
        if not isinstance(values, list) or not values or len(values) > MAX_EVENTS_PER_CALL:
            return f"events must hold 1 to {MAX_EVENTS_PER_CALL} events"
        events = []
        for value in values:
            if problem := event_problem(value):
                return problem
            try:  # as the gateway: its compiled parser, and json_format for what that declines
                events.append(
                    protojson.parse(value, ingest_pb2.Event)
                    or json_format.ParseDict(value, ingest_pb2.Event())
                )
            except json_format.ParseError as error:
                return str(error)
        return events

    async def append_event(request: Request) -> Response:
        events = await events_of(request, batch=False)
        if isinstance(events, str):
            return problem_response(400, 3, events)
        [receipt] = await sender.submit(events)
        return _json({"receipt": protojson.to_dict(receipt), "replayed": False})

    async def append_events(request: Request) -> Response:
        events = await events_of(request, batch=True)
        if isinstance(events, str):
            return problem_response(400, 3, events)
        receipts = await sender.submit(events)
        results = [{"index": i, "receipt": protojson.to_dict(r)} for i, r in enumerate(receipts)]
        return _json({"results": results})

    return Starlette(
        routes=[
            Route("/v1/events", append_event, methods=["POST"]),
            Route("/v1/events:batchAppend", append_events, methods=["POST"]),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    roles = parser.add_subparsers(dest="role", required=True)
    store = roles.add_parser("store", help="the gRPC store that group-commits into PostgreSQL")
    store.add_argument("--database-url", required=True, help="SQLAlchemy URL of a scratch database")
    edge = roles.add_parser("edge", help="the HTTP edge that forwards to the store")
    edge.add_argument("--store", required=True, help="the store's host:port")
    for each in (store, edge):
        each.add_argument("--host", default="127.0.0.1")
        each.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.role == "edge":
        serve_as_the_gateway(create_edge_app(args.store), host=args.host, port=args.port)
        return 0
    from services.runtime.process import run_main, tune_garbage_collector  # as the services run

    tune_garbage_collector()
    run_main(serve_store(host=args.host, port=args.port, database_url=args.database_url))
    return 0


if __name__ == "__main__":
    sys.exit(main())
