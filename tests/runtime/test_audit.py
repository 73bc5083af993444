"""Access records: the recorder's batching and retries, and the interceptor over a real server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2
from awareness.policy.v1 import policy_pb2, policy_pb2_grpc

from services.runtime import audit, auth
from services.runtime.audit import AccessRecord, AuditRecorder, RejectedRecordsError
from services.runtime.config import load_settings
from services.runtime.metrics import ServiceMetrics
from services.runtime.server import ServiceApp, build_context
from tests.conftest import IDENTITY_ENV
from tests.support.servers import Clients, start_server

RECORD = AccessRecord(
    principal="key:k1",
    action="event.read",
    method="/awareness.ingest.v1.IngestService/GetEvent",
    resource="events/e1",
    outcome="OK",
    time=datetime(2026, 12, 6, 1, 0, tzinfo=UTC),
    pseudonyms=("psn_a",),
    details={"events": "1"},
)


class Sink:
    """Collects what the recorder appends; fails while ``down`` is set."""

    def __init__(self) -> None:
        self.batches: list[list[ingest_pb2.Event]] = []
        self.down = False
        self.refuse = 0

    async def __call__(self, events: Sequence[ingest_pb2.Event]) -> None:
        if self.down:
            raise ConnectionError("ingest unreachable")
        self.batches.append(list(events))
        if self.refuse:
            raise RejectedRecordsError(self.refuse, "bad record")

    @property
    def events(self) -> list[ingest_pb2.Event]:
        return [event for batch in self.batches for event in batch]


def test_a_record_becomes_one_system_event_without_empty_details() -> None:
    [event] = audit.audit_events(RECORD, source="ingest")
    assert event.type == "audit.action"
    assert event.source == "ingest"
    assert event.subject_pseudonym == "psn_a"
    assert not event.subject
    assert dict(event.details) == {
        "principal": "key:k1",
        "action": "event.read",
        "method": "/awareness.ingest.v1.IngestService/GetEvent",
        "resource": "events/e1",
        "outcome": "OK",
        "events": "1",
    }


def test_many_subjects_split_into_parts_that_each_name_theirs() -> None:
    pseudonyms = tuple(f"psn_{index:026d}" for index in range(audit.PSEUDONYMS_PER_RECORD * 2 + 1))
    record = dataclasses.replace(RECORD, resource="events", pseudonyms=pseudonyms, details={})
    events = audit.audit_events(record, source="ingest")
    assert [event.details["part"] for event in events] == ["1/3", "2/3", "3/3"]
    named: list[str] = []
    for event in events:
        named += event.details["pseudonyms"].split(",") if "pseudonyms" in event.details else []
        named += [event.subject_pseudonym] if event.subject_pseudonym else []
        # Within ingest's limit for details (16 KiB).
        assert sum(len(k) + len(v) for k, v in event.details.items()) < 16 * 1024
    assert named == list(pseudonyms)
    assert len({event.event_id for event in events}) == 3


async def test_notes_reach_the_record_only_inside_a_call_and_cannot_overwrite_its_fields() -> None:
    audit.note(resource="ignored", pseudonyms=["psn_x"])  # outside a call: nothing to note into
    token = audit.begin()
    audit.note(resource="erasures/1", pseudonyms=["psn_x", "psn_x", ""], details={"principal": "forged"})
    audit.note(details={"keys_shredded": "3"})
    notes = audit.end(token)
    assert notes.resource == "erasures/1"
    assert notes.pseudonyms == ["psn_x"]
    assert notes.details == {"keys_shredded": "3"}
    assert not notes.skipped


async def test_records_are_batched_and_retried_with_the_same_event_ids() -> None:
    sink = Sink()
    recorder = AuditRecorder(source="gdpr", sink=sink, batch_size=3, flush_seconds=0.01, retry_seconds=0.01)
    sink.down = True
    for _ in range(5):
        recorder.record(RECORD)
    running = asyncio.create_task(recorder.run())
    await asyncio.sleep(0.1)
    assert sink.batches == [] and recorder.pending == 5
    sink.down = False
    for _ in range(100):
        if recorder.pending == 0:
            break
        await asyncio.sleep(0.01)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert [len(batch) for batch in sink.batches] == [3, 2]
    assert len({event.event_id for event in sink.events}) == 5


async def test_a_full_queue_drops_and_counts_instead_of_blocking_the_call() -> None:
    metrics = ServiceMetrics("gdpr")
    sink = Sink()
    recorder = AuditRecorder(source="gdpr", sink=sink, capacity=2, metrics=metrics)
    for _ in range(3):
        recorder.record(RECORD)
    assert recorder.pending == 2
    assert metrics.registry.get_sample_value("awareness_gdpr_audit_records_total", {"fate": "dropped"}) == 1
    await recorder.flush()
    assert metrics.registry.get_sample_value("awareness_gdpr_audit_records_total", {"fate": "written"}) == 2
    assert metrics.registry.get_sample_value("awareness_gdpr_audit_records_pending") == 0


async def test_records_the_log_refuses_are_dropped_not_retried_forever() -> None:
    metrics = ServiceMetrics("gdpr")
    sink = Sink()
    sink.refuse = 1
    recorder = AuditRecorder(source="gdpr", sink=sink, metrics=metrics)
    recorder.record(RECORD)
    recorder.record(RECORD)
    await recorder.flush()
    assert recorder.pending == 0
    assert metrics.registry.get_sample_value("awareness_gdpr_audit_records_total", {"fate": "dropped"}) == 1
    assert metrics.registry.get_sample_value("awareness_gdpr_audit_records_total", {"fate": "written"}) == 1


async def test_drain_counts_what_it_could_not_write() -> None:
    metrics = ServiceMetrics("gdpr")
    sink = Sink()
    sink.down = True
    recorder = AuditRecorder(source="gdpr", sink=sink, metrics=metrics)
    recorder.record(RECORD)
    await recorder.drain(timeout_seconds=0.1)
    assert recorder.pending == 0
    assert metrics.registry.get_sample_value("awareness_gdpr_audit_records_total", {"fate": "dropped"}) == 1


async def test_without_a_sink_nothing_is_queued() -> None:
    recorder = AuditRecorder(source="test", sink=None)
    recorder.record(RECORD)
    assert recorder.pending == 0


class _Policies(policy_pb2_grpc.PolicyServiceServicer):
    """A stand-in policy service: approves what it is asked, notes a fact, fails on request."""

    async def ApprovePolicy(self, request: Any, context: Any) -> Any:
        audit.note(details={"version": "2"})
        if request.name == "policies/missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such policy")
        return policy_pb2.Policy(name=request.name)

    async def GetPolicy(self, request: Any, context: Any) -> Any:
        return policy_pb2.Policy(name=request.name)


@pytest.fixture
async def policy_server(tmp_path: Path) -> Any:
    context = build_context(
        load_settings("policy", {**IDENTITY_ENV, "AWARENESS_DATA_DIR": str(tmp_path)}), with_database=False
    )
    sink = Sink()
    app = ServiceApp(
        name="policy",
        service_names=["awareness.policy.v1.PolicyService"],
        register=lambda server: policy_pb2_grpc.add_PolicyServiceServicer_to_server(_Policies(), server),  # type: ignore[abstract]
        audit_sink=sink,
    )
    running = await start_server(app, context)
    try:
        yield running, sink
    finally:
        await running.stop()


async def _settled(sink: Sink, count: int) -> list[ingest_pb2.Event]:
    for _ in range(200):
        if len(sink.events) >= count:
            break
        await asyncio.sleep(0.01)
    return sink.events


async def test_the_interceptor_records_audited_calls_with_outcome_and_principal(policy_server: Any) -> None:
    running, sink = policy_server
    clients = Clients({"policy": running.address})
    approver = auth.Principal(subject="user:ana", roles=frozenset({"policy_approver"}))
    analyst = auth.Principal(subject="key:an1", roles=frozenset({"analyst"}))
    try:
        stub = policy_pb2_grpc.PolicyServiceStub(clients.channel("policy", approver))
        await stub.ApprovePolicy(policy_pb2.ApprovePolicyRequest(name="policies/p1"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ApprovePolicy(policy_pb2.ApprovePolicyRequest(name="policies/missing"))
        await stub.GetPolicy(policy_pb2.GetPolicyRequest(name="policies/p1"))  # not audited
        denied = policy_pb2_grpc.PolicyServiceStub(clients.channel("policy", analyst))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await denied.ApprovePolicy(policy_pb2.ApprovePolicyRequest(name="policies/p1"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        events = await _settled(sink, 3)
    finally:
        await clients.close()
    await asyncio.sleep(0.05)
    seen = [
        (e.details["principal"], e.details["action"], e.details["resource"], e.details["outcome"])
        for e in events
    ]
    assert seen == [
        ("user:ana", "policy.approve", "policies/p1", "OK"),
        ("user:ana", "policy.approve", "policies/missing", "NOT_FOUND"),
        ("key:an1", "policy.approve", "policies/p1", "PERMISSION_DENIED"),
    ]
    assert events[0].details["version"] == "2"
    # The refused call never reached the handler, so it carries nothing the handler would note.
    assert "version" not in events[2].details
    assert all(e.source == "policy" and e.type == "audit.action" for e in events)


@pytest.mark.parametrize(
    ("typed", "kept"),
    [
        ("policies/p-1", "policies/p-1"),
        ("events/6f1c1f3e-0000-4000-8000-000000000001", "events/6f1c1f3e-0000-4000-8000-000000000001"),
        ("policies/alice@example.org", "policies"),
        ("events/+33 6 12 34 56 78", "events"),
        ("events/0612345678", "events"),
        ("alice@example.org", ""),
        ("", ""),
    ],
)
def test_a_refused_callers_resource_is_kept_only_in_the_shape_services_mint(typed: str, kept: str) -> None:
    assert audit.refused_resource(typed) == kept
