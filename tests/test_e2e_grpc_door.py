"""The gateway's gRPC door end to end: `awareness up`, the generated stubs, `awareness_client.connect`.

An internal system (a mail gateway, an IdP) uses the `awareness-client` stubs unchanged against
the door, with its own API key: the same roles, permissions and rate limits as over HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence

import awareness_client
import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from awareness.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from grpc_status import rpc_status

from services.runtime.errors import error_info
from tests.ingest.harness import make_event
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PRINCIPAL_LIMIT = 40  # requests per minute per key: a stream of 20 messages fits, 41 calls do not
EVENTS, BATCH = 10_000, 500


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, suite_backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp(f"door-e2e-{suite_backend.name}")
    extra = {"AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": str(PRINCIPAL_LIMIT)}
    with awareness_up(data_dir, suite_backend, extra_env=extra) as running:
        yield running


def _reason(error: grpc.RpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, error
    info = error_info(status)
    return info.reason if info is not None else ""


def test_an_internal_system_streams_ten_thousand_events_and_an_analyst_reads_them_back(
    suite: UpSuite,
) -> None:
    source = f"door-{uuid.uuid4().hex[:8]}"
    events = [
        make_event(subject=f"person-{n % 2_000}@example.org", source=source, summary="reported")
        for n in range(EVENTS)
    ]
    batches = [ingest_pb2.AppendEventsRequest(events=events[i : i + BATCH]) for i in range(0, EVENTS, BATCH)]
    with awareness_client.connect(suite.door, api_key=suite.create_key("integration"), tls=False) as channel:
        answers = list(
            ingest_pb2_grpc.IngestServiceStub(channel).StreamAppendEvents(iter(batches), timeout=120)
        )
    results = [result for answer in answers for result in answer.results]
    assert len(results) == EVENTS
    refused = [result.error.message for result in results if result.WhichOneof("result") != "receipt"]
    assert refused == []
    receipt_ids = {result.receipt.event_id for result in results}
    assert receipt_ids == {event.event_id for event in events}

    seen: set[str] = set()
    with awareness_client.connect(suite.door, api_key=suite.create_key("analyst"), tls=False) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        token = ""
        while True:
            page = stub.ListEvents(
                ingest_pb2.ListEventsRequest(source=source, page_size=1000, page_token=token), timeout=30
            )
            seen.update(event.event_id for event in page.events)
            token = page.next_page_token
            if not token:
                break
        one = stub.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{events[0].event_id}"), timeout=30)
    assert seen == receipt_ids
    assert one.subject == events[0].subject  # the analyst may read personal fields


def _refused(suite: UpSuite, role: str | None, call: Callable[[grpc.Channel], object]) -> grpc.RpcError:
    """The refusal of ``call`` through the door, with a key of ``role`` (None: no key at all)."""
    if role is None:
        channel = grpc.insecure_channel(suite.door)
    else:
        channel = awareness_client.connect(suite.door, api_key=suite.create_key(role), tls=False)
    with channel, pytest.raises(grpc.RpcError) as refused:
        call(channel)
    return refused.value


def _append(
    event: ingest_pb2.Event, metadata: Sequence[tuple[str, str]] = ()
) -> Callable[[grpc.Channel], object]:
    request = ingest_pb2.AppendEventRequest(event=event)
    return lambda channel: ingest_pb2_grpc.IngestServiceStub(channel).AppendEvent(
        request, metadata=metadata, timeout=30
    )


def test_an_analyst_key_may_not_append(suite: UpSuite) -> None:
    refused = _refused(suite, "analyst", _append(make_event()))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _reason(refused) == "MISSING_PERMISSION"


def test_a_call_without_a_key_is_unauthenticated(suite: UpSuite) -> None:
    assert _refused(suite, None, _append(make_event())).code() == grpc.StatusCode.UNAUTHENTICATED


def test_forged_internal_metadata_claims_nothing(suite: UpSuite) -> None:
    # A caller who writes the services' own principal headers is still only its key.
    forged = [("x-awareness-principal", "service:ingest"), ("x-awareness-roles", "service")]
    refused = _refused(suite, "analyst", _append(make_event(), forged))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


def test_internal_methods_are_not_served_at_the_door(suite: UpSuite) -> None:
    refused = _refused(
        suite,
        "admin",
        lambda channel: gdpr_pb2_grpc.GdprServiceStub(channel).UnwrapDataKeys(
            gdpr_pb2.UnwrapDataKeysRequest(), timeout=30
        ),
    )
    assert refused.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_bad_event_is_the_services_own_invalid_argument(suite: UpSuite) -> None:
    refused = _refused(suite, "integration", _append(make_event(event_type="no.such.type")))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(refused)
    assert status is not None and status.details  # ErrorInfo and field violations came through


def test_past_the_limit_calls_are_resource_exhausted(suite: UpSuite) -> None:
    with awareness_client.connect(suite.door, api_key=suite.create_key("analyst"), tls=False) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        for _ in range(PRINCIPAL_LIMIT):
            stub.ListEvents(ingest_pb2.ListEventsRequest(page_size=1), timeout=30)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListEvents(ingest_pb2.ListEventsRequest(page_size=1), timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _reason(refused.value) == "RATE_LIMITED"


def test_a_stream_past_the_limit_ends_resource_exhausted_after_its_answers(suite: UpSuite) -> None:
    batches = [ingest_pb2.AppendEventsRequest(events=[make_event()]) for _ in range(PRINCIPAL_LIMIT + 5)]
    answers: list[ingest_pb2.AppendEventsResponse] = []

    def stream(channel: grpc.Channel) -> None:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        answers.extend(stub.StreamAppendEvents(iter(batches), timeout=60))

    refused = _refused(suite, "integration", stream)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(answers) == PRINCIPAL_LIMIT  # every message within the limit was answered
