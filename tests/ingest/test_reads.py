"""Reading the log: filters and AIP-158 pages, labels, subject records, ForgetSubject and the
training examples scoring reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2
from grpc_status import rpc_status

from services.evidence.envelope import SealedPersonal, open_personal
from services.runtime.errors import field_violations
from tests.ingest.harness import make_event, suite, timestamp

NOW = datetime.now(UTC).replace(microsecond=0)


async def test_list_events_filters_and_pages(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        client = running.client()
        events = [
            make_event(
                subject=subject, event_type=kind, source=source, occurred_at=NOW - timedelta(hours=hours)
            )
            for subject, kind, source, hours in (
                ("dave@example.org", "phishing.clicked", "gophish", 5),
                ("dave@example.org", "phishing.reported", "gophish", 4),
                ("erin@example.org", "phishing.clicked", "okta", 3),
                ("erin@example.org", "mfa.disabled", "okta", 2),
                ("dave@example.org", "login.failed", "okta", 1),
            )
        ]
        for event in events:  # one by one: a distinct receive time each, newest last
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=event))

        async def ids(**filters: Any) -> list[str]:
            found: list[str] = []
            token = ""
            while True:
                page = await client.ListEvents(
                    ingest_pb2.ListEventsRequest(page_size=2, page_token=token, **filters)
                )
                assert len(page.events) <= 2
                found += [e.event_id for e in page.events]
                token = page.next_page_token
                if not token:
                    return found

        everything = await ids()
        assert everything == [e.event_id for e in reversed(events)]  # newest received first
        assert await ids(type="phishing.clicked") == [events[2].event_id, events[0].event_id]
        assert await ids(source="okta") == [events[4].event_id, events[3].event_id, events[2].event_id]
        dave = (
            await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{events[0].event_id}"))
        ).subject_pseudonym
        assert await ids(subject_pseudonym=dave) == [
            events[4].event_id,
            events[1].event_id,
            events[0].event_id,
        ]
        window = {
            "start_time": timestamp(NOW - timedelta(hours=4)),
            "end_time": timestamp(NOW - timedelta(hours=2)),
        }
        assert await ids(**window) == [events[2].event_id, events[1].event_id]
        page = await client.ListEvents(ingest_pb2.ListEventsRequest(page_size=1))
        assert page.events[0].subject == "dave@example.org"  # decrypted in lists too

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.ListEvents(
                ingest_pb2.ListEventsRequest(page_token=page.next_page_token, source="okta")
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # By identifier, resolved through gdpr (more in test_subject_filter.py).
        assert await ids(subject="dave@example.org") == await ids(subject_pseudonym=dave)

        labelled = await running.client(roles=("analyst",)).LabelEvent(
            ingest_pb2.LabelEventRequest(
                name=f"events/{events[2].event_id}",
                label=ingest_pb2.LABEL_TRUE_POSITIVE,
                note="clicked and entered nothing",
                triage_state=ingest_pb2.TRIAGE_STATE_CLOSED,
            )
        )
        assert labelled.metadata.label == ingest_pb2.LABEL_TRUE_POSITIVE
        assert labelled.metadata.labeled_by == "tester" and labelled.metadata.HasField("label_time")
        assert await ids(label=ingest_pb2.LABEL_TRUE_POSITIVE) == [events[2].event_id]
        assert await ids(triage_state=ingest_pb2.TRIAGE_STATE_CLOSED) == [events[2].event_id]
        assert len(await ids(triage_state=ingest_pb2.TRIAGE_STATE_NEW)) == 4
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.LabelEvent(ingest_pb2.LabelEventRequest(name=f"events/{events[0].event_id}"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        examples = await running.internal("scoring").ListTrainingExamples(
            ingest_pb2.ListTrainingExamplesRequest()
        )
        [example] = examples.examples
        assert example.label == ingest_pb2.LABEL_TRUE_POSITIVE
        assert example.input.event_id == events[2].event_id and example.input.type == "phishing.clicked"
        assert (
            example.input.history.events_24h == 0 and example.input.history.seconds_since_previous_event == -1
        )
        await client.LabelEvent(
            ingest_pb2.LabelEventRequest(
                name=f"events/{events[4].event_id}", label=ingest_pb2.LABEL_FALSE_POSITIVE
            )
        )
        examples = await running.internal("scoring").ListTrainingExamples(
            ingest_pb2.ListTrainingExamplesRequest()
        )
        dave_login = next(e for e in examples.examples if e.input.event_id == events[4].event_id)
        history = dave_login.input.history
        # dave's two earlier events, 4 h and 3 h before; the login source (okta) is new for him.
        assert (history.events_24h, history.events_7d, history.source_is_new) == (2, 2, True)
        assert history.seconds_since_previous_event == pytest.approx(3 * 3600)


async def test_subject_records_are_ciphertext_and_forget_subject_counts(tmp_path: Path) -> None:
    from awareness.gdpr.v1 import gdpr_pb2, gdpr_pb2_grpc

    # No enrichment: its retries (policy is not running) unwrap these keys in the background and
    # could cache one again between ForgetSubject and the check of the cache below.
    async with suite(tmp_path, ingest_env={"AWARENESS_INGEST_ENRICHMENT": "false"}) as running:
        client = running.client()
        events = [make_event(subject="frank@example.org", summary=f"event {i}") for i in range(5)]
        await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=events))
        pseudonym = (
            await client.GetEvent(ingest_pb2.GetEventRequest(name=f"events/{events[0].event_id}"))
        ).subject_pseudonym

        records = []
        token = ""
        while True:
            page = await running.internal().ListSubjectRecords(
                ingest_pb2.ListSubjectRecordsRequest(pseudonym=pseudonym, page_size=2, page_token=token)
            )
            records += page.records
            token = page.next_page_token
            if not token:
                break
        assert [r.event_id for r in records] == [e.event_id for e in events]  # oldest first
        assert all(b"frank" not in r.ciphertext for r in records)
        # gdpr decrypts them with its key and the published format (what an export does).
        keys = await gdpr_pb2_grpc.GdprServiceStub(running.channel("gdpr", caller="ingest")).UnwrapDataKeys(
            gdpr_pb2.UnwrapDataKeysRequest(
                keys=[gdpr_pb2.DataKeyRef(pseudonym=pseudonym, key_period=records[0].key_period)]
            )
        )
        opened = open_personal(
            key=keys.keys[0].data_key,
            key_id=keys.keys[0].key_id,
            event_id=records[3].event_id,
            sealed=SealedPersonal(nonce=records[3].nonce, ciphertext=records[3].ciphertext),
        )
        assert (opened.subject, opened.summary) == ("frank@example.org", "event 3")

        forgotten = await running.internal().ForgetSubject(
            ingest_pb2.ForgetSubjectRequest(pseudonym=pseudonym)
        )
        assert forgotten.event_count == 5
        assert running.ingest.keys.forget(pseudonym) == 0  # the cache no longer holds any key of it
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.ForgetSubject(ingest_pb2.ForgetSubjectRequest(pseudonym=pseudonym))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_order_is_one_of_two_and_its_pages_keep_to_it(tmp_path: Path) -> None:
    async with suite(tmp_path) as running:
        client = running.client()
        for _ in range(3):
            await client.AppendEvent(ingest_pb2.AppendEventRequest(event=make_event()))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.ListEvents(ingest_pb2.ListEventsRequest(order_by="subject asc"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(rpc_status.from_call(caught.value))] == ["order_by"]
        newest = await client.ListEvents(
            ingest_pb2.ListEventsRequest(page_size=1, order_by="Receive_Time  DESC")
        )
        assert len(newest.events) == 1 and newest.next_page_token
        # Nothing is scored here (no scoring service): the riskiest-first list is empty, not an error.
        assert not (await client.ListEvents(ingest_pb2.ListEventsRequest(order_by="risk_score desc"))).events
        # A page token belongs to its order.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.ListEvents(
                ingest_pb2.ListEventsRequest(order_by="risk_score desc", page_token=newest.next_page_token)
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
