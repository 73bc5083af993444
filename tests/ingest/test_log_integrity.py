"""The log's guarantees against its own database: triggers refuse changes, `awareness verify` names
a tampered record, and a raw dump holds no plaintext personal data (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from awareness.ingest.v1 import ingest_pb2
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from services.ingest.models import APPEND_ONLY_TABLES
from tests.ingest.harness import awareness_verify, eventually, make_event, suite

SECRET_SUBJECT = "carol.secret-subject@example.org"
SECRET_SUMMARY = "Carol typed her password into the fake-sso page"
SECRET_DETAIL = "https://evil-sso.example/carol-landing"


async def append_and_checkpoint(running: Any, count: int) -> list[str]:
    client = running.client()
    events = [
        make_event(subject=SECRET_SUBJECT, summary=SECRET_SUMMARY, details={"landing_url": SECRET_DETAIL})
        for _ in range(count)
    ]
    await client.AppendEvents(ingest_pb2.AppendEventsRequest(events=events))

    async def checkpointed() -> bool:
        try:
            await client.GetCheckpoint(ingest_pb2.GetCheckpointRequest(tree_size=count))
            return True
        except grpc.aio.AioRpcError:
            return False

    await eventually(checkpointed, what=f"a checkpoint of {count} leaves")
    return [e.event_id for e in events]


def ingest_engine(running: Any) -> Engine:
    engine: Engine | None = running.services["ingest"].context.engine
    assert engine is not None
    return engine


def ingest_url(running: Any) -> str:
    return str(ingest_engine(running).url.render_as_string(hide_password=False))


async def test_triggers_refuse_update_and_delete_on_every_log_table(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        # 16 leaves: the smallest tree with a stored node (lower levels are computed from leaves).
        [event_id, *_] = await append_and_checkpoint(running, 16)
        # A read of personal data leaves an access record (an event and its index rows).
        await running.client().GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event_id}"))
        await eventually(lambda: access_rows(ingest_engine(running)), what="the read's access record")
        await asyncio.to_thread(check_triggers, ingest_engine(running), event_id)


def access_rows(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM access_records")).scalar_one())


def check_triggers(engine: Engine, event_id: str) -> None:
    """Every log table refuses UPDATE and DELETE (and TRUNCATE on PostgreSQL); metadata does not."""
    changes = {
        "event_records": "SET source = 'forged'",
        "leaves": "SET leaf_index = leaf_index + 100",
        "tree_nodes": "SET idx = idx + 100",
        "checkpoints": "SET note = 'forged'",
        "access_records": "SET principal = 'someone else'",
    }
    assert set(changes) == set(APPEND_ONLY_TABLES)
    for table, assignment in changes.items():
        for statement in (f"UPDATE {table} {assignment}", f"DELETE FROM {table}"):
            with pytest.raises(DBAPIError) as caught, engine.begin() as connection:
                connection.execute(text(statement))
            assert "append-only" in str(caught.value)
        if engine.dialect.name == "postgresql":
            with pytest.raises(DBAPIError), engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {table}"))
    with engine.begin() as connection:
        rows = connection.execute(text("SELECT count(*) FROM event_records")).scalar_one()
        assert rows == 17  # and the access record
        # The metadata beside the log stays mutable.
        updated = connection.execute(
            text("UPDATE event_metadata SET triage_state = 2 WHERE event_id = :id"), {"id": event_id}
        ).rowcount
        assert updated == 1


def tamper(engine: Engine, *, event_id: str) -> None:
    """Flip one stored ciphertext byte the way a database superuser could."""
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.execute(text("DROP TRIGGER IF EXISTS event_records_refuse_update"))
        else:
            connection.execute(text("SET LOCAL session_replication_role = replica"))
        ciphertext = bytearray(
            connection.execute(
                text("SELECT ciphertext FROM event_records WHERE event_id = :id"), {"id": event_id}
            ).scalar_one()
        )
        ciphertext[len(ciphertext) // 2] ^= 0x01
        connection.execute(
            text("UPDATE event_records SET ciphertext = :value WHERE event_id = :id"),
            {"value": bytes(ciphertext), "id": event_id},
        )


async def test_verify_names_the_first_record_changed_behind_the_log(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        event_ids = await append_and_checkpoint(running, 8)
        url = ingest_url(running)
        clean = await asyncio.to_thread(awareness_verify, "--database", url)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert "8 records re-hashed" in clean.stdout and "FAIL" not in clean.stdout

        client = running.client()
        leaf_of = {}
        for event_id in event_ids:
            receipt = await client.GetReceipt(ingest_pb2.GetReceiptRequest(name=f"events/{event_id}"))
            leaf_of[event_id] = receipt.leaf_index
        by_leaf = sorted(event_ids, key=leaf_of.__getitem__)
        later, first = by_leaf[6], by_leaf[3]
        engine = ingest_engine(running)
        await asyncio.to_thread(tamper, engine, event_id=later)
        await asyncio.to_thread(tamper, engine, event_id=first)

        broken = await asyncio.to_thread(awareness_verify, "--database", url)
        assert broken.returncode == 1
        assert f"record {first} (leaf index 3)" in broken.stdout, broken.stdout
        assert later not in broken.stdout
        assert "records checked" in clean.stderr  # the progress line


async def test_a_raw_dump_of_the_database_holds_no_plaintext_personal_data(
    tmp_path: Path, database_url: str | None
) -> None:
    async with suite(tmp_path, database_url=database_url) as running:
        [event_id, *_] = await append_and_checkpoint(running, 4)
        read = await running.client().GetEvent(ingest_pb2.GetEventRequest(name=f"events/{event_id}"))
        assert read.subject == SECRET_SUBJECT  # the data is there, readable through the API only
        engine = ingest_engine(running)
        if engine.dialect.name == "sqlite":
            await running.stop("ingest")
            database = Path(str(engine.url.database))
            dump = b"".join(
                path.read_bytes() for path in database.parent.glob(database.name + "*") if path.is_file()
            )
        else:
            url = make_url(ingest_url(running))
            dump = subprocess.run(
                ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-n", "awareness_ingest", str(url.database)],
                capture_output=True,
                timeout=120,
                check=True,
            ).stdout
        assert read.subject_pseudonym.encode() in dump  # the dump does hold the log
        for secret in (SECRET_SUBJECT, SECRET_SUMMARY, SECRET_DETAIL, "carol"):
            assert secret.encode() not in dump
            assert secret.encode("utf-16-le") not in dump
