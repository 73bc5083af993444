"""An internal system, as the README's example writes it: the `awareness-client` wheel only.

Run by tests/test_e2e_grpc_door.py inside a fresh virtualenv that has the built wheel and nothing
of this repository: it imports no project module, only the wheel and its declared dependencies
(grpcio, protobuf, googleapis-common-protos). It streams events through the gateway's gRPC door
with an integration key and reads them back with an analyst key; then it is refused as the README
says: an analyst key's append, a call without a key, a stream past the rate limit. It prints what
it saw as JSON. Keys come from the environment (AWARENESS_DOOR_INTEGRATION_KEY,
AWARENESS_DOOR_ANALYST_KEY, AWARENESS_DOOR_LIMITED_KEY), so they stay out of the process list.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import awareness_client
import grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS = "grpc-status-details-bin"  # the trailer carrying the google.rpc.Status


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


def _stream_and_read_back(target: str, ca: bytes, count: int, batch: int) -> dict[str, Any]:
    source = f"wheel-{uuid.uuid4().hex[:8]}"
    events = _events(count, source)
    key = os.environ["AWARENESS_DOOR_INTEGRATION_KEY"]
    with awareness_client.connect(target, api_key=key, tls=ca) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        answers = list(stub.StreamAppendEvents(_batches(events, batch), timeout=300))
    results = [result for answer in answers for result in answer.results]
    receipts = {r.receipt.event_id for r in results if r.WhichOneof("result") == "receipt"}

    read_back: set[str] = set()
    key = os.environ["AWARENESS_DOOR_ANALYST_KEY"]
    with awareness_client.connect(target, api_key=key, tls=ca) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        request = ingest_pb2.ListEventsRequest(source=source, page_size=1000)
        while True:
            page = stub.ListEvents(request, timeout=60)
            read_back.update(event.event_id for event in page.events)
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token

    sent = {event.event_id for event in events}
    return {
        "sent": len(sent),
        "results": len(results),
        "receipts_match": receipts == sent,
        "read_back_match": read_back == sent,
        "refused": [r.error.message for r in results if r.WhichOneof("result") == "error"][:5],
    }


def _refusal(error: grpc.RpcError, answered: int) -> dict[str, Any]:
    """The status code and the ErrorInfo detail of a refusal, decoded from its trailer."""
    trailer = dict(error.trailing_metadata() or ()).get(STATUS_DETAILS, b"")
    info = error_details_pb2.ErrorInfo()
    for detail in status_pb2.Status.FromString(trailer).details:
        if detail.Unpack(info):
            break
    return {"code": error.code().name, "reason": info.reason, "domain": info.domain, "answered": answered}


def _append_stream(channel: grpc.Channel, messages: int) -> dict[str, Any]:
    """Streams ``messages`` one-event messages; the refusal that ended the stream, if any."""
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    requests = (ingest_pb2.AppendEventsRequest(events=_events(1, "wheel-refusals")) for _ in range(messages))
    answered = 0
    try:
        for _ in stub.StreamAppendEvents(requests, timeout=60):
            answered += 1
    except grpc.RpcError as error:
        return _refusal(error, answered)
    return {"code": "OK", "reason": "", "domain": "", "answered": answered}


def _refusals(target: str, ca: bytes, past_limit: int) -> dict[str, dict[str, Any]]:
    seen: dict[str, dict[str, Any]] = {}
    key = os.environ["AWARENESS_DOOR_ANALYST_KEY"]
    with awareness_client.connect(target, api_key=key, tls=ca) as channel:
        seen["analyst_append"] = _append_stream(channel, 1)
    # connect insists on a credential: a caller without one has only grpc's own channel.
    with grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)) as channel:
        seen["no_key"] = _append_stream(channel, 1)
    key = os.environ["AWARENESS_DOOR_LIMITED_KEY"]
    with awareness_client.connect(target, api_key=key, tls=ca) as channel:
        seen["past_limit"] = _append_stream(channel, past_limit)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="the door, host:port")
    parser.add_argument("--ca", required=True, help="PEM file of the CA the door's certificate chains to")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--past-limit", type=int, required=True, help="messages to stream past the limit")
    args = parser.parse_args()
    with open(args.ca, "rb") as handle:
        ca = handle.read()
    streamed = _stream_and_read_back(args.target, ca, args.events, args.batch)
    refusals = _refusals(args.target, ca, args.past_limit)
    print(
        json.dumps(
            {
                "client_module": awareness_client.__file__,
                "stubs_module": ingest_pb2.__file__,
                **streamed,
                "refusals": refusals,
            }
        )
    )


if __name__ == "__main__":
    main()
