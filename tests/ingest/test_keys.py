"""The gdpr key cache: batched lookups, TTL, ForgetSubject, erased keys and gdpr outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import code_pb2, status_pb2

from services.ingest.keys import (
    ERASED,
    KeyLookup,
    SubjectKey,
    SubjectKeys,
    _Entry,
    _ExpiringEntries,
    utc_month,
)
from services.runtime import auth
from services.runtime.clients import ChannelFactory
from services.runtime.config import load_settings
from services.runtime.errors import DependencyUnavailableError, UnimplementedError
from services.runtime.server import ServiceApp, build_context, create_server
from tests.ingest.harness import service_env
from tests.support.servers import client_factory

WHEN = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)
WHEN_US = int(WHEN.timestamp()) * 1_000_000


class FakeGdpr(gdpr_pb2_grpc.GdprServiceServicer):
    """A gdpr double: one pseudonym per subject, keys per (subject, month); counts calls."""

    def __init__(self) -> None:
        self.lookups: list[gdpr_pb2.SubjectKeyLookup] = []
        self.key_calls = 0
        self.erased: set[str] = set()
        self.unwrap_gate: asyncio.Event | None = None  # holds UnwrapDataKeys answers back while set

    async def GetSubjectKeys(
        self, request: gdpr_pb2.GetSubjectKeysRequest, context: Any
    ) -> gdpr_pb2.GetSubjectKeysResponse:
        self.lookups.extend(request.lookups)
        self.key_calls += 1
        await asyncio.sleep(0.02)  # a round trip, so that concurrent callers overlap
        return gdpr_pb2.GetSubjectKeysResponse(
            keys=[
                gdpr_pb2.SubjectKey(
                    pseudonym=f"psn_{lookup.subject}",
                    key_period=lookup.occurred_at.ToDatetime().strftime("%Y-%m"),
                    key_id=f"dk_{lookup.subject}",
                    data_key=bytes(32),
                    cache_ttl=Duration(seconds=3600),
                )
                for lookup in request.lookups
            ]
        )

    async def UnwrapDataKeys(
        self, request: gdpr_pb2.UnwrapDataKeysRequest, context: Any
    ) -> gdpr_pb2.UnwrapDataKeysResponse:
        if self.unwrap_gate is not None:
            await self.unwrap_gate.wait()
        answers = []
        for ref in request.keys:
            if ref.pseudonym in self.erased:
                answers.append(
                    gdpr_pb2.UnwrappedDataKey(
                        pseudonym=ref.pseudonym,
                        key_period=ref.key_period,
                        error=status_pb2.Status(code=code_pb2.NOT_FOUND),
                    )
                )
            else:
                answers.append(
                    gdpr_pb2.UnwrappedDataKey(
                        pseudonym=ref.pseudonym, key_period=ref.key_period, data_key=bytes(32), key_id="dk"
                    )
                )
        return gdpr_pb2.UnwrapDataKeysResponse(keys=answers)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def gdpr(tmp_path: Path) -> AsyncIterator[tuple[FakeGdpr, str]]:
    fake = FakeGdpr()  # type: ignore[abstract]
    context = build_context(
        load_settings("gdpr", service_env(data_dir=tmp_path, ports={})), with_database=False
    )
    app = ServiceApp(
        name="gdpr",
        service_names=["awareness.gdpr.v1.GdprService"],
        register=lambda server: gdpr_pb2_grpc.add_GdprServiceServicer_to_server(fake, server),
    )
    server, _health, port = create_server(app, context, port=0)
    await server.start()
    yield fake, f"127.0.0.1:{port}"
    await server.stop(0)


def keys_for(
    address: str, clock: Clock, ttl: float = 60.0, max_entries: int = 1000
) -> tuple[SubjectKeys, ChannelFactory]:
    factory = client_factory(
        {"gdpr": address},
        auth.Principal.for_service("ingest"),
        timeout_seconds=2,
        attempts=1,
        breaker_fail_max=100,
        breaker_reset_seconds=0.1,
    )
    keys = SubjectKeys(
        channel=lambda: factory.channel("gdpr"), ttl_seconds=ttl, max_entries=max_entries, clock=clock
    )
    return keys, factory


async def test_lookups_are_batched_deduplicated_and_cached(gdpr: tuple[FakeGdpr, str]) -> None:
    fake, address = gdpr
    clock = Clock()
    keys, factory = keys_for(address, clock)
    lookups = [
        KeyLookup("a@x", WHEN_US, "phishing.clicked"),
        KeyLookup("b@x", WHEN_US, "phishing.clicked"),
        KeyLookup("a@x", WHEN_US, "phishing.clicked"),
    ]
    first = await keys.keys_for(lookups)
    assert [k.pseudonym for k in first] == ["psn_a@x", "psn_b@x", "psn_a@x"]
    assert len(fake.lookups) == 2  # one call, each distinct subject once
    await keys.keys_for(lookups)
    assert len(fake.lookups) == 2  # cached
    await keys.keys_for([KeyLookup("a@x", WHEN_US, "training.completed")])
    assert len(fake.lookups) == 3  # a new event type reaches gdpr (retention tracks the types per key)
    clock.now += 61
    await keys.keys_for(lookups[:1])
    assert len(fake.lookups) == 4  # TTL expired
    assert keys.forget("psn_a@x") >= 1
    await keys.keys_for(lookups[:1])
    assert len(fake.lookups) == 5  # forgotten
    await factory.close()


async def test_unwrap_reports_erased_keys_and_outages(gdpr: tuple[FakeGdpr, str], tmp_path: Path) -> None:
    fake, address = gdpr
    fake.erased.add("psn_gone")
    keys, factory = keys_for(address, Clock())
    found = await keys.unwrap([("psn_here", "2026-03"), ("psn_gone", "2026-03")])
    assert isinstance(found[("psn_here", "2026-03")], SubjectKey)
    assert found[("psn_gone", "2026-03")] == ERASED
    await factory.close()

    from tests.conftest import free_port

    nowhere, factory = keys_for(f"127.0.0.1:{free_port()}", Clock())
    with pytest.raises(DependencyUnavailableError):
        await nowhere.keys_for([KeyLookup("a@x", WHEN_US, "phishing.clicked")])
    with pytest.raises(DependencyUnavailableError):
        await nowhere.unwrap([("psn_here", "2026-03")])
    await factory.close()
    assert grpc.StatusCode.NOT_FOUND.value[0] == code_pb2.NOT_FOUND


async def test_a_key_in_flight_while_its_subject_is_forgotten_is_not_kept(gdpr: tuple[FakeGdpr, str]) -> None:
    # The race that matters after an erasure: gdpr answered before deleting the key, and
    # ForgetSubject arrived while that answer was still on its way to the reconciler.
    fake, address = gdpr
    keys, factory = keys_for(address, Clock())
    fake.unwrap_gate = asyncio.Event()
    in_flight = asyncio.create_task(keys.unwrap([("psn_ivan", "2026-03")]))
    await asyncio.sleep(0.2)
    keys.forget("psn_ivan")
    fake.unwrap_gate.set()
    assert (await in_flight)[("psn_ivan", "2026-03")] == ERASED
    # The stale key is not resurrected by the cache either.
    assert (await keys.unwrap([("psn_ivan", "2026-03")]))[("psn_ivan", "2026-03")] == ERASED
    # A read that starts after the forget is answered normally.
    keys.forget("psn_other")
    assert isinstance((await keys.unwrap([("psn_zoe", "2026-03")]))[("psn_zoe", "2026-03")], SubjectKey)
    await factory.close()


async def test_forget_stamps_last_only_while_a_call_that_could_be_misled_is_in_flight(
    gdpr: tuple[FakeGdpr, str],
) -> None:
    fake, address = gdpr
    keys, factory = keys_for(address, Clock())
    for number in range(1000):  # retention may forget thousands of subjects a day
        keys.forget(f"psn_{number}")
    assert len(keys._forgotten_at) == 0  # no call in flight: nothing can be misled
    fake.unwrap_gate = asyncio.Event()
    in_flight = asyncio.create_task(keys.unwrap([("psn_ivan", "2026-03")]))
    await asyncio.sleep(0.2)
    keys.forget("psn_ivan")
    keys.forget("psn_other")
    assert set(keys._forgotten_at) == {"psn_ivan", "psn_other"}
    fake.unwrap_gate.set()
    assert (await in_flight)[("psn_ivan", "2026-03")] == ERASED
    keys.forget("psn_later")
    assert len(keys._forgotten_at) == 0
    await factory.close()


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 3, 1, tzinfo=UTC),
        datetime(2026, 2, 28, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2024, 2, 29, 12, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, tzinfo=UTC),
    ],
)
def test_utc_month_names_the_month_of_the_microsecond(moment: datetime) -> None:
    micros = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    expected = f"{moment.year:04d}-{moment.month:02d}"
    assert utc_month(micros) == expected
    assert utc_month(micros) == expected  # the memoised answer, as computed


async def test_expired_keys_are_evicted_not_kept_until_the_cache_is_full(gdpr: tuple[FakeGdpr, str]) -> None:
    _fake, address = gdpr
    clock = Clock()
    keys, factory = keys_for(address, clock, ttl=60.0)
    await keys.keys_for([KeyLookup(f"u{i}@x", WHEN_US, "phishing.clicked") for i in range(5)])
    await keys.unwrap([("psn_u0@x", "2026-03")])
    assert len(keys._append_cache) == 5 and len(keys._read_cache) == 5
    clock.now += 61
    # The next call sweeps: no raw key stays in memory past its TTL, however small the cache.
    await keys.keys_for([KeyLookup("late@x", WHEN_US, "phishing.clicked")])
    assert set(keys._append_cache) == {("late@x", "phishing.clicked", "2026-03")}
    assert set(keys._read_cache) == {("psn_late@x", "2026-03")}
    clock.now += 61
    assert keys.evict_expired() == 2
    assert not keys._append_cache and not keys._read_cache
    await factory.close()


async def test_a_gdpr_refusal_keeps_its_code_by_the_runtime_rule(gdpr: tuple[FakeGdpr, str]) -> None:
    # FakeGdpr has no LookupSubject: gdpr answers UNIMPLEMENTED, and ingest says so (not FAILED_PRECONDITION).
    _fake, address = gdpr
    keys, factory = keys_for(address, Clock())
    with pytest.raises(UnimplementedError) as caught:
        await keys.lookup_pseudonym("a@x")
    assert caught.value.reason == "GDPR_REFUSED"
    assert caught.value.metadata == {
        "target": "gdpr",
        "code": "UNIMPLEMENTED",
        "peer_reason": "NOT_IMPLEMENTED_YET",
    }
    await factory.close()


async def test_concurrent_misses_share_gdpr_calls_and_each_caller_gets_its_own_keys(
    gdpr: tuple[FakeGdpr, str],
) -> None:
    fake, address = gdpr
    keys, factory = keys_for(address, Clock())
    people = [f"person{number}@x" for number in range(100)]
    answers = await asyncio.gather(
        *(keys.keys_for([KeyLookup(person, WHEN_US, "phishing.clicked")]) for person in people)
    )
    assert [answer[0].pseudonym for answer in answers] == [f"psn_{person}" for person in people]
    assert len(fake.lookups) == len(people)  # each person asked once
    assert fake.key_calls < len(people) / 4  # in a few calls, not one per caller
    # The same person asked by many callers at once: one lookup.
    again = await asyncio.gather(*(keys.keys_for([KeyLookup("new@x", WHEN_US, "t")]) for _ in range(20)))
    assert {answer[0].pseudonym for answer in again} == {"psn_new@x"}
    assert len(fake.lookups) == len(people) + 1
    await factory.close()


async def test_the_cache_holds_at_most_max_entries_oldest_out_first(gdpr: tuple[FakeGdpr, str]) -> None:
    fake, address = gdpr
    keys, factory = keys_for(address, Clock(), max_entries=10)
    await keys.keys_for([KeyLookup(f"p{number}@x", WHEN_US, "t") for number in range(15)])
    assert len(keys._append_cache) == 10 and len(keys._read_cache) == 10
    asked = len(fake.lookups)
    await keys.keys_for([KeyLookup("p14@x", WHEN_US, "t")])  # among the newest: cached
    assert len(fake.lookups) == asked
    await keys.keys_for([KeyLookup("p0@x", WHEN_US, "t")])  # the oldest went first: asked again
    assert len(fake.lookups) == asked + 1
    await factory.close()


def entries_expiring_at(*moments: float, max_entries: int = 100) -> _ExpiringEntries:
    entries = _ExpiringEntries(max_entries=max_entries)
    for number, moment in enumerate(moments):
        entries.remember(f"k{number}", _Entry(ERASED, moment))
    return entries


def test_a_sweep_drops_exactly_the_expired_entries_in_expiry_order() -> None:
    entries = entries_expiring_at(*range(1, 11))
    assert entries.sweep(5.5) == 5
    assert list(entries) == ["k5", "k6", "k7", "k8", "k9"]
    assert entries.sweep(5.5) == 0


def test_an_entry_granted_a_shorter_ttl_is_still_swept_on_time() -> None:
    # k1 expires before k0, stored before it: not at the front, and a raw key must not outlive its
    # TTL in memory all the same.
    entries = entries_expiring_at(10.0, 3.0, 12.0)
    assert entries.sweep(5.0) == 1
    assert list(entries) == ["k0", "k2"]
    entries.remember("k3", _Entry(ERASED, 20.0))  # in order again: the front-only sweep resumes
    assert entries.sweep(11.0) == 1
    assert list(entries) == ["k2", "k3"]


def test_storing_again_moves_an_entry_to_its_new_expiry_and_the_oldest_go_past_the_cap() -> None:
    entries = entries_expiring_at(1.0, 2.0, 3.0, max_entries=3)
    entries.remember("k0", _Entry(ERASED, 4.0))  # refreshed: now the last to expire
    assert list(entries) == ["k1", "k2", "k0"]
    entries.remember("k9", _Entry(ERASED, 5.0))
    assert list(entries) == ["k2", "k0", "k9"]  # k1, the first to expire, went
    assert entries.sweep(3.5) == 1 and list(entries) == ["k0", "k9"]
