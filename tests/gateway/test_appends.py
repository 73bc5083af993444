"""The gateway's coalescing of single appends (services/gateway/appends.py), with ingest faked.

The fakes stand in for the two calls to ingest only; what ingest answers through the real gateway
is tested end to end in tests/test_e2e_gateway.py.
"""

from __future__ import annotations

import asyncio

import pytest
from awareness.ingest.v1 import ingest_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.gateway.appends import MAX_SHARED_EVENT_BYTES, AppendCoalescer
from services.gateway.domain.status import StatusError, as_single_item
from services.runtime import auth
from services.runtime.errors import ERROR_DOMAIN, error_info, field_violations

ANALYST = auth.Principal(subject="key:one", roles=frozenset({"integration"}))
OTHER = auth.Principal(subject="key:two", roles=frozenset({"integration"}))


def _request(event_id: str, event_type: str = "phishing.clicked") -> ingest_pb2.AppendEventRequest:
    return ingest_pb2.AppendEventRequest(event=ingest_pb2.Event(event_id=event_id, type=event_type))


def _invalid(index: int) -> status_pb2.Status:
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"invalid event: events[{index}].type: unknown type"
    )
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="EVENT_INVALID", domain=ERROR_DOMAIN))
    status.details.add().Pack(
        error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=f"events[{index}].type", description="unknown type"
                )
            ]
        )
    )
    return status


class FakeIngest:
    """AppendEvent and AppendEvents as ingest answers them, recording who called with what."""

    def __init__(self, *, integrated: frozenset[str] = frozenset()) -> None:
        self.integrated = integrated
        self.single: list[tuple[str, str]] = []  # (principal, event id)
        self.batches: list[tuple[str, list[str]]] = []
        self.release = asyncio.Event()
        self.release.set()

    def _who(self) -> str:
        principal = auth.current_principal()
        return principal.subject if principal else ""

    def _receipt(self, event_id: str) -> ingest_pb2.Receipt:
        receipt = ingest_pb2.Receipt(event_id=event_id, state=ingest_pb2.Receipt.STATE_ACCEPTED)
        if event_id in self.integrated:
            receipt.leaf_index = 7
        return receipt

    async def append_one(self, request: ingest_pb2.AppendEventRequest) -> ingest_pb2.AppendEventResponse:
        self.single.append((self._who(), request.event.event_id))
        await self.release.wait()
        if request.event.type == "no.such.type":
            raise StatusError(
                as_single_item(_invalid(0), index=0, batch_field="events", single_field="event")
            )
        receipt = self._receipt(request.event.event_id)
        if request.event.event_id in self.integrated:
            receipt.state = ingest_pb2.Receipt.STATE_CHECKPOINTED
        return ingest_pb2.AppendEventResponse(
            receipt=receipt, replayed=request.event.event_id in self.integrated
        )

    async def append_many(self, request: ingest_pb2.AppendEventsRequest) -> ingest_pb2.AppendEventsResponse:
        self.batches.append((self._who(), [event.event_id for event in request.events]))
        await self.release.wait()
        results = []
        for index, event in enumerate(request.events):
            if event.type == "no.such.type":
                results.append(ingest_pb2.AppendEventResult(index=index, error=_invalid(index)))
            else:
                results.append(
                    ingest_pb2.AppendEventResult(
                        index=index,
                        receipt=self._receipt(event.event_id),
                        replayed=event.event_id in self.integrated,
                    )
                )
        return ingest_pb2.AppendEventsResponse(results=results)


def _coalescer(ingest: FakeIngest, *, in_flight: int = 1) -> AppendCoalescer:
    return AppendCoalescer(
        append_one=ingest.append_one, append_many=ingest.append_many, calls_in_flight=in_flight
    )


async def _as(
    principal: auth.Principal, coalescer: AppendCoalescer, request: ingest_pb2.AppendEventRequest
) -> object:
    token = auth.set_current_principal(principal)
    try:
        return await coalescer.append(request)
    except StatusError as error:
        return error
    finally:
        auth._current.reset(token)


async def test_an_idle_gateway_sends_an_append_alone() -> None:
    ingest = FakeIngest()
    answer = await _as(ANALYST, _coalescer(ingest), _request("a"))
    assert isinstance(answer, ingest_pb2.AppendEventResponse)
    assert answer.receipt.event_id == "a"
    assert ingest.single == [("key:one", "a")] and ingest.batches == []


async def test_appends_arriving_during_a_call_share_the_next_one_each_answered_as_its_own() -> None:
    ingest = FakeIngest()
    coalescer = _coalescer(ingest)
    ingest.release.clear()
    first = asyncio.ensure_future(_as(ANALYST, coalescer, _request("first")))
    await asyncio.sleep(0)  # the first call is in flight and held
    crowd = [asyncio.ensure_future(_as(ANALYST, coalescer, _request(f"e{i}"))) for i in range(20)]
    crowd.append(asyncio.ensure_future(_as(ANALYST, coalescer, _request("bad", "no.such.type"))))
    await asyncio.sleep(0.01)
    ingest.release.set()
    answers = await asyncio.gather(first, *crowd)
    assert ingest.single == [("key:one", "first")]
    assert ingest.batches == [("key:one", [f"e{i}" for i in range(20)] + ["bad"])]
    for index, answer in enumerate(answers[1:-1]):
        assert isinstance(answer, ingest_pb2.AppendEventResponse)
        assert answer.receipt.event_id == f"e{index}"
    refused = answers[-1]
    assert isinstance(refused, StatusError)
    # Worded as AppendEvent words it, not as item 20 of a batch.
    assert refused.to_status().message == "invalid event: event.type: unknown type"
    assert [v.field for v in field_violations(refused.to_status())] == ["event.type"]
    info = error_info(refused.to_status())
    assert info is not None and info.reason == "EVENT_INVALID"
    assert refused.reason == "EVENT_INVALID"


async def test_principals_never_share_a_call_and_each_call_carries_its_principal() -> None:
    ingest = FakeIngest()
    coalescer = _coalescer(ingest)
    ingest.release.clear()
    held = [
        asyncio.ensure_future(_as(ANALYST, coalescer, _request("one-0"))),
        asyncio.ensure_future(_as(OTHER, coalescer, _request("two-0"))),
    ]
    await asyncio.sleep(0)
    later = [
        asyncio.ensure_future(_as(p, coalescer, _request(f"{n}-{i}")))
        for i in (1, 2)
        for p, n in ((ANALYST, "one"), (OTHER, "two"))
    ]
    await asyncio.sleep(0.01)
    ingest.release.set()
    await asyncio.gather(*held, *later)
    assert sorted(ingest.single) == [("key:one", "one-0"), ("key:two", "two-0")]
    assert sorted(ingest.batches) == [("key:one", ["one-1", "one-2"]), ("key:two", ["two-1", "two-2"])]


async def test_a_replay_of_an_integrated_event_is_asked_alone_for_its_checkpoint() -> None:
    ingest = FakeIngest(integrated=frozenset({"old"}))
    coalescer = _coalescer(ingest)
    ingest.release.clear()
    first = asyncio.ensure_future(_as(ANALYST, coalescer, _request("first")))
    await asyncio.sleep(0)
    replay = asyncio.ensure_future(_as(ANALYST, coalescer, _request("old")))
    fresh = asyncio.ensure_future(_as(ANALYST, coalescer, _request("new")))
    await asyncio.sleep(0.01)
    ingest.release.set()
    _, replayed, new = await asyncio.gather(first, replay, fresh)
    assert ingest.batches == [("key:one", ["old", "new"])]
    assert ("key:one", "old") in ingest.single
    assert isinstance(replayed, ingest_pb2.AppendEventResponse) and replayed.replayed
    assert replayed.receipt.state == ingest_pb2.Receipt.STATE_CHECKPOINTED
    assert isinstance(new, ingest_pb2.AppendEventResponse) and not new.replayed


async def test_a_failed_call_fails_the_appends_it_carried_and_not_the_next() -> None:
    calls = 0

    async def append_many(request: ingest_pb2.AppendEventsRequest) -> ingest_pb2.AppendEventsResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("ingest went away")
        return ingest_pb2.AppendEventsResponse(
            results=[ingest_pb2.AppendEventResult(index=i) for i in range(len(request.events))]
        )

    gate = asyncio.Event()

    async def append_one(request: ingest_pb2.AppendEventRequest) -> ingest_pb2.AppendEventResponse:
        await gate.wait()
        return ingest_pb2.AppendEventResponse()

    coalescer = AppendCoalescer(append_one=append_one, append_many=append_many, calls_in_flight=1)
    first = asyncio.ensure_future(_as(ANALYST, coalescer, _request("a")))
    await asyncio.sleep(0)
    failing = [asyncio.ensure_future(_as(ANALYST, coalescer, _request(f"b{i}"))) for i in range(3)]
    await asyncio.sleep(0)
    gate.set()
    await first
    for task in failing:
        with pytest.raises(ConnectionError):
            await task
    gate.clear()
    held = asyncio.ensure_future(_as(ANALYST, coalescer, _request("c")))
    await asyncio.sleep(0)
    after = [asyncio.ensure_future(_as(ANALYST, coalescer, _request(f"d{i}"))) for i in range(2)]
    await asyncio.sleep(0)
    gate.set()
    assert all(isinstance(a, ingest_pb2.AppendEventResponse) for a in await asyncio.gather(held, *after))


def test_a_batch_items_error_is_renamed_only_where_it_names_that_item() -> None:
    status = _invalid(3)
    status.message += " (see events[30].type too)"
    single = as_single_item(status, index=3, batch_field="events", single_field="event")
    assert single.message == "invalid event: event.type: unknown type (see events[30].type too)"
    assert [v.field for v in field_violations(single)] == ["event.type"]
    assert single.code == code_pb2.INVALID_ARGUMENT
    info = error_info(single)
    assert info is not None and info.reason == "EVENT_INVALID"


async def test_a_large_event_goes_alone_so_a_shared_call_stays_small() -> None:
    ingest = FakeIngest()
    coalescer = _coalescer(ingest)
    ingest.release.clear()
    first = asyncio.ensure_future(_as(ANALYST, coalescer, _request("first")))
    await asyncio.sleep(0)
    large = _request("large")
    large.event.summary = "x" * (MAX_SHARED_EVENT_BYTES + 1)
    crowd = [
        asyncio.ensure_future(_as(ANALYST, coalescer, request)) for request in (large, _request("small"))
    ]
    await asyncio.sleep(0.01)
    ingest.release.set()
    await asyncio.gather(first, *crowd)
    assert sorted(event_id for _, event_id in ingest.single) == ["first", "large", "small"]
    assert ingest.batches == []
