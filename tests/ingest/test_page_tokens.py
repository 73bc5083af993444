"""Ingest's list RPCs, internal ones included, accept only page tokens they issued themselves."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
from awareness.ingest.v1 import ingest_pb2

from services.runtime.paging import PageTokens
from tests.grpc_errors import reason_of, rpc_error, violated_fields
from tests.ingest.harness import make_event, suite
from tests.support.servers import SERVICE_SECRET


async def test_forged_and_foreign_tokens_are_invalid_page_token_on_every_ingest_list(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        client, internal = running.client(), running.internal()
        events = [make_event(subject="carol@example.org") for _ in range(3)]
        await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        first = await client.ListEvents(ingest_pb2.ListEventsRequest(page_size=1))
        assert first.next_page_token
        # A token in the right format under a key derived from another secret: what a caller
        # without ingest's own service secret (every other service, every client) could make at best.
        outsider = PageTokens.from_secret(b"not the suite's secret").encode(
            [1, "x"], method="ingest.ListEvents"
        )
        forged = [
            first.next_page_token[:-1] + ("A" if first.next_page_token[-1] != "A" else "B"),
            base64.urlsafe_b64encode(b'[1700000000000000,"x"]').decode(),
            outsider,
            "not a token!",
        ]
        # The suite's own codec with the right key, but a position of the wrong type.
        wrong_type = PageTokens.from_secret(SERVICE_SECRET).encode(["x"], method="ingest.ListCheckpoints")
        calls = [
            *(client.ListEvents(ingest_pb2.ListEventsRequest(page_token=token)) for token in forged),
            client.ListCheckpoints(ingest_pb2.ListCheckpointsRequest(page_token=first.next_page_token)),
            client.ListCheckpoints(ingest_pb2.ListCheckpointsRequest(page_token=wrong_type)),
            internal.ListSubjectRecords(
                ingest_pb2.ListSubjectRecordsRequest(pseudonym="psn_x", page_token=first.next_page_token)
            ),
            running.internal("scoring").ListTrainingExamples(
                ingest_pb2.ListTrainingExamplesRequest(page_token=first.next_page_token)
            ),
        ]
        for call in calls:
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason_of(error) == "INVALID_PAGE_TOKEN"
            assert violated_fields(error) == {"page_token"}
        second = await client.ListEvents(
            ingest_pb2.ListEventsRequest(page_size=1, page_token=first.next_page_token)
        )
        assert second.events[0].event_id != first.events[0].event_id
