"""`awareness gdpr verify-audit`: the audit chain recomputed from the database, on SQLite and PostgreSQL.

Records are changed the way a database superuser could (the append-only trigger dropped on SQLite,
``session_replication_role = replica`` on PostgreSQL); the command must name the first broken record.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

from awareness.gdpr.v1 import gdpr_pb2
from sqlalchemy import Engine, text

from services.gdpr.verify import verify_audit_database
from services.runtime.db import create_db_engine
from tests.gdpr.conftest import Harness
from tests.gdpr.test_service_audit_and_storage import all_audit_records
from tests.gdpr.test_service_keys_and_erasure import unique_subject

REPO = Path(__file__).resolve().parents[2]


async def run_verify_audit(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "gdpr",
        "verify-audit",
        *args,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def some_audited_actions(harness: Harness, count: int) -> list[gdpr_pb2.AuditRecord]:
    """``count`` audit records (rule changes, consent and dry runs), oldest first."""
    for index in range(count):
        match index % 3:
            case 0:
                await harness.dpo.SetRetentionRule(
                    gdpr_pb2.SetRetentionRuleRequest(
                        rule=gdpr_pb2.RetentionRule(event_type="login.failed", retention_days=400 + index),
                        reason=f"change {index}",
                    )
                )
            case 1:
                await harness.dpo.WithdrawConsent(
                    gdpr_pb2.WithdrawConsentRequest(
                        subject=unique_subject(), purpose="profiling", reason=f"objection {index}"
                    )
                )
            case _:
                await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(dry_run=True))
    records = sorted(await all_audit_records(harness), key=lambda record: record.sequence)
    assert len(records) == count
    return records


def gdpr_engine(harness: Harness) -> Engine:
    # The service's own engine settings: on PostgreSQL, search_path = awareness_gdpr.
    return create_db_engine(harness.database_url, service="gdpr")


def tamper(harness: Harness, statement: str, **params: object) -> None:
    """Run one UPDATE or DELETE on audit_records past its append-only trigger, as a superuser could."""
    engine = gdpr_engine(harness)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "sqlite":
                connection.execute(text("DROP TRIGGER IF EXISTS audit_records_refuse_update"))
                connection.execute(text("DROP TRIGGER IF EXISTS audit_records_refuse_delete"))
            else:
                connection.execute(text("SET LOCAL session_replication_role = replica"))
            assert connection.execute(text(statement), params).rowcount == 1
    finally:
        engine.dispose()


def flip_one_byte(harness: Harness, *, sequence: int, column: str) -> None:
    engine = gdpr_engine(harness)
    try:
        with engine.connect() as connection:
            value = connection.execute(
                text(f"SELECT {column} FROM audit_records WHERE sequence = :s"), {"s": sequence}
            ).scalar_one()
    finally:
        engine.dispose()
    if isinstance(value, str):
        changed: object = value[:1] + chr(ord(value[1]) ^ 0x01) + value[2:]
    else:
        raw = bytearray(value)
        raw[len(raw) // 2] ^= 0x01
        changed = bytes(raw)
    tamper(harness, f"UPDATE audit_records SET {column} = :v WHERE sequence = :s", v=changed, s=sequence)


def verify(harness: Harness, *, published_head: bytes | None = None) -> tuple[bool, str]:
    engine = gdpr_engine(harness)
    try:
        report = verify_audit_database(engine, progress=None, published_head=published_head)
    finally:
        engine.dispose()
    out = io.StringIO()
    report.print(out)
    return report.ok, out.getvalue()


async def test_a_clean_chain_verifies_and_a_changed_byte_names_the_first_broken_record(
    harness: Harness,
) -> None:
    records = await some_audited_actions(harness, 8)
    url = harness.database_url

    code, out, err = await run_verify_audit("--database", url)

    assert code == 0, out + err
    assert "records checked: 8\n" in out
    assert f"head hash:       {records[-1].entry_hash.hex()} (sequence {records[-1].sequence})" in out
    assert out.rstrip().endswith("OK") and "FAIL" not in out

    # One byte of a later record's hash and one byte of an earlier record's reason: the earlier is named.
    later, first = records[6], records[2]
    await asyncio.to_thread(flip_one_byte, harness, sequence=later.sequence, column="entry_hash")
    await asyncio.to_thread(flip_one_byte, harness, sequence=first.sequence, column="reason")

    code, out, err = await run_verify_audit("--database", url, "--quiet")

    assert code == 1, out + err
    assert "records checked: 2 (intact before the break)" in out
    assert f"head hash:       {records[1].entry_hash.hex()} (sequence {records[1].sequence})" in out
    [failure] = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert f"record sequence {first.sequence} ({first.action} at " in failure, out
    assert "fields (actor, action, target, at, reason, request_id) were changed" in failure
    assert first.entry_hash.hex() in failure  # the stored hash, beside the recomputed one
    assert f"sequence {later.sequence}" not in out
    assert err == ""  # --quiet


async def test_what_differs_is_named_for_a_cut_tail_a_changed_hash_and_a_removed_record(
    harness: Harness,
) -> None:
    records = await some_audited_actions(harness, 7)
    ok, _ = await asyncio.to_thread(verify, harness, published_head=records[3].entry_hash)
    assert ok

    # The newest record removed: the rest is a consistent chain, only a published head reveals the cut.
    await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(dry_run=True))
    latest = await harness.dpo.ListAuditRecords(gdpr_pb2.ListAuditRecordsRequest(page_size=1))
    newest = latest.audit_records[0]
    await asyncio.to_thread(
        tamper, harness, "DELETE FROM audit_records WHERE sequence = :s", s=newest.sequence
    )
    ok, out = await asyncio.to_thread(verify, harness)
    assert ok and "records checked: 7\n" in out
    ok, out = await asyncio.to_thread(verify, harness, published_head=newest.entry_hash)
    assert not ok
    assert f"the published head {newest.entry_hash.hex()} is not in the chain" in out

    # Only the stored entry_hash changed: the next record still links to the recomputed one.
    await asyncio.to_thread(flip_one_byte, harness, sequence=records[5].sequence, column="entry_hash")
    ok, out = await asyncio.to_thread(verify, harness)
    assert not ok
    assert f"record sequence {records[5].sequence}" in out and "its stored entry_hash was changed" in out

    # A record removed: the one after it no longer links to its predecessor.
    await asyncio.to_thread(
        tamper, harness, "DELETE FROM audit_records WHERE sequence = :s", s=records[2].sequence
    )
    ok, out = await asyncio.to_thread(verify, harness)
    assert not ok
    assert "records checked: 2 (intact before the break)" in out
    assert f"record sequence {records[3].sequence}" in out
    assert f"the entry_hash of the record before it (sequence {records[1].sequence})" in out


async def test_progress_lines_for_long_trails_and_usage_errors(harness: Harness, tmp_path: Path) -> None:
    records = await some_audited_actions(harness, 7)
    engine = gdpr_engine(harness)
    progress = io.StringIO()
    try:
        report = await asyncio.to_thread(verify_audit_database, engine, progress=progress, batch_size=3)
    finally:
        engine.dispose()
    assert report.ok and report.checked == 7 and report.head_hash == records[-1].entry_hash
    assert progress.getvalue().splitlines() == [
        "verify-audit: 3/7 records checked",
        "verify-audit: 6/7 records checked",
        "verify-audit: 7/7 records checked",
    ]

    code, out, err = await run_verify_audit(
        "--database", harness.database_url, "--published-head", records[2].entry_hash.hex()
    )
    assert code == 0, out + err
    assert f"published head:  found at sequence {records[2].sequence}" in out
    code, _, err = await run_verify_audit("--database", harness.database_url, "--published-head", "abc")
    assert code == 2 and "64 hex digits" in err
    missing = tmp_path / "nowhere" / "gdpr.db"
    code, _, err = await run_verify_audit("--database", f"sqlite:///{missing}")
    assert code == 2 and "no gdpr database" in err
    assert not missing.exists()
    code, out, _ = await run_verify_audit("--help")
    assert code == 0 and "first record that breaks the chain" in out and "--quiet" in out


async def test_an_empty_trail_verifies(harness: Harness) -> None:
    ok, out = await asyncio.to_thread(verify, harness)
    assert ok
    assert "records checked: 0\n" in out and f"{bytes(32).hex()} (genesis: empty chain)" in out
