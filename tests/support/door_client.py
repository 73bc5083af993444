"""An internal system, as the README's example writes it: the `awareness-client` wheel only.

Run by tests/test_e2e_grpc_door.py inside a fresh virtualenv that has the built wheel and nothing
of this repository: it imports no project module. It streams events through the gateway's gRPC
door with an integration key, reads them back with an analyst key, and prints what it saw as JSON.
Keys come from the environment (AWARENESS_DOOR_INTEGRATION_KEY, AWARENESS_DOOR_ANALYST_KEY), so
they stay out of the process list.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import awareness_client
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp


def _events(count: int, source: str) -> list[ingest_pb2.Event]:
    occurred = Timestamp()
    occurred.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    return [
        ingest_pb2.Event(
            event_id=str(uuid.uuid4()),
            type="phishing.reported",
            source=source,
            subject=f"person-{n % 2_000}@example.org",
            occurred_at=occurred,
            severity=ingest_pb2.SEVERITY_LOW,
            summary="reported the quarterly-bonus mail",
        )
        for n in range(count)
    ]


def _batches(events: list[ingest_pb2.Event], size: int) -> Iterator[ingest_pb2.AppendEventsRequest]:
    for start in range(0, len(events), size):
        yield ingest_pb2.AppendEventsRequest(events=events[start : start + size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="the door, host:port")
    parser.add_argument("--ca", required=True, help="PEM file of the CA the door's certificate chains to")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    with open(args.ca, "rb") as handle:
        ca = handle.read()
    source = f"wheel-{uuid.uuid4().hex[:8]}"
    events = _events(args.events, source)

    key = os.environ["AWARENESS_DOOR_INTEGRATION_KEY"]
    with awareness_client.connect(args.target, api_key=key, tls=ca) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        answers = list(stub.StreamAppendEvents(_batches(events, args.batch), timeout=300))
    results = [result for answer in answers for result in answer.results]
    receipts = {r.receipt.event_id for r in results if r.WhichOneof("result") == "receipt"}

    read_back: set[str] = set()
    key = os.environ["AWARENESS_DOOR_ANALYST_KEY"]
    with awareness_client.connect(args.target, api_key=key, tls=ca) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        request = ingest_pb2.ListEventsRequest(source=source, page_size=1000)
        while True:
            page = stub.ListEvents(request, timeout=60)
            read_back.update(event.event_id for event in page.events)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token

    sent = {event.event_id for event in events}
    print(
        json.dumps(
            {
                "client_module": awareness_client.__file__,
                "stubs_module": ingest_pb2.__file__,
                "sent": len(sent),
                "results": len(results),
                "receipts_match": receipts == sent,
                "read_back_match": read_back == sent,
                "refused": [r.error.message for r in results if r.WhichOneof("result") == "error"][:5],
            }
        )
    )


if __name__ == "__main__":
    main()
