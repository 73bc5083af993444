"""ImportDirectory over gRPC, on SQLite and PostgreSQL: import, update, full sync, the department in
GetSubjectKeys, erasure, export and the permission."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from awareness.gdpr.v1 import gdpr_pb2
from sqlalchemy import create_engine, text

from services.gdpr.models import Base
from services.runtime.auth import Principal
from tests.gdpr.conftest import ADMIN, ANALYST, Harness, timestamp
from tests.gdpr.test_service_export_and_consent import export
from tests.gdpr.test_service_keys_and_erasure import unique_subject
from tests.grpc_errors import reason_of, rpc_error, violated_fields
from tests.support.resources import migrated_engine

MARCH = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)


def entry(subject: str, department: str = "", manager: str = "") -> gdpr_pb2.DirectoryEntry:
    return gdpr_pb2.DirectoryEntry(subject=subject, department=department, manager_subject=manager)


async def import_directory(
    harness: Harness, *entries: gdpr_pb2.DirectoryEntry, replace: bool = False, import_id: str = ""
) -> tuple[int, int, int, int]:
    reply = await harness.dpo.ImportDirectory(
        gdpr_pb2.ImportDirectoryRequest(entries=entries, replace=replace, import_id=import_id)
    )
    return reply.created_count, reply.updated_count, reply.unchanged_count, reply.removed_count


async def keys_of(harness: Harness, *subjects: str) -> list[gdpr_pb2.SubjectKey]:
    reply = await harness.internal.GetSubjectKeys(
        gdpr_pb2.GetSubjectKeysRequest(
            lookups=[gdpr_pb2.SubjectKeyLookup(subject=s, occurred_at=timestamp(MARCH)) for s in subjects]
        )
    )
    return list(reply.keys)


async def departments(harness: Harness, *subjects: str) -> list[str]:
    return [key.department for key in await keys_of(harness, *subjects)]


async def pseudonym(harness: Harness, subject: str) -> str:
    reply = await harness.internal.LookupSubject(gdpr_pb2.LookupSubjectRequest(subject=subject))
    return str(reply.pseudonym)


def stored_rows(harness: Harness) -> dict[str, tuple[str, str | None, str | None]]:
    """Every directory row as stored: pseudonym -> (department, manager pseudonym, import id)."""
    engine = create_engine(harness.database_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SET search_path TO awareness_gdpr"))
            rows = connection.execute(
                text("SELECT pseudonym, department, manager_pseudonym, import_id FROM directory_entries")
            )
            return {row.pseudonym: (row.department, row.manager_pseudonym, row.import_id) for row in rows}
    finally:
        engine.dispose()


async def test_import_places_people_and_get_subject_keys_returns_their_department(harness: Harness) -> None:
    ada, grace, alan, outsider = (unique_subject() for _ in range(4))
    # Grace has events already (a pseudonym); Ada and Alan are new; the import finds or creates theirs.
    grace_key = (await keys_of(harness, grace))[0]
    assert grace_key.department == ""

    counts = await import_directory(
        harness,
        entry(ada, "Finance", grace),
        entry(f"  {grace.upper()} ", " Finance  "),  # spelled as another source spells it
        entry(alan, "Research", grace),
    )

    assert counts == (3, 0, 0, 0)
    assert await pseudonym(harness, grace) == grace_key.pseudonym  # the existing subject, not a new one
    keys = await keys_of(harness, ada, grace, alan, outsider)
    assert [key.department for key in keys] == ["Finance", "Finance", "Research", ""]
    # Asked again, every key exists: the one-query read path carries the departments too.
    assert await departments(harness, ada, grace, alan, outsider) == ["Finance", "Finance", "Research", ""]
    rows = stored_rows(harness)
    assert rows[keys[0].pseudonym][:2] == ("Finance", grace_key.pseudonym)
    assert rows[keys[1].pseudonym][:2] == ("Finance", None)
    # Only pseudonyms are stored: no identifier, no part of one.
    assert not any("@" in value for row in rows.values() for value in row if value)
    assert set(rows) == {keys[0].pseudonym, keys[1].pseudonym, keys[2].pseudonym}


async def test_a_manager_not_in_the_directory_gets_a_pseudonym_without_an_entry(harness: Harness) -> None:
    person, manager = unique_subject(), unique_subject()
    await import_directory(harness, entry(person, "Sales", manager))
    manager_pseudonym = await pseudonym(harness, manager)  # registered, as GetSubjectKeys would
    assert stored_rows(harness)[await pseudonym(harness, person)][1] == manager_pseudonym
    assert manager_pseudonym not in stored_rows(harness)
    assert await departments(harness, manager) == [""]


async def test_a_second_import_updates_what_changed_and_counts_the_rest_unchanged(harness: Harness) -> None:
    ada, grace, alan = unique_subject(), unique_subject(), unique_subject()
    await import_directory(harness, entry(ada, "Finance", grace), entry(grace, "Finance"), entry(alan, "Lab"))
    first_rows = stored_rows(harness)

    counts = await import_directory(
        harness, entry(ada, "Finance", grace), entry(grace, "Tax"), entry(alan, "Lab", ada)
    )

    assert counts == (0, 2, 1, 0)
    assert await departments(harness, ada, grace, alan) == ["Finance", "Tax", "Lab"]
    rows = stored_rows(harness)
    assert rows[await pseudonym(harness, alan)][1] == await pseudonym(harness, ada)
    assert len(rows) == len(first_rows) == 3
    # Importing the same again changes nothing (the call is idempotent).
    again = await import_directory(
        harness, entry(ada, "Finance", grace), entry(grace, "Tax"), entry(alan, "Lab", ada)
    )
    assert again == (0, 0, 3, 0)


async def test_without_replace_people_left_out_keep_their_entry(harness: Harness) -> None:
    ada, grace = unique_subject(), unique_subject()
    await import_directory(harness, entry(ada, "Finance"), entry(grace, "Tax"))
    assert await import_directory(harness, entry(ada, "Audit")) == (0, 1, 0, 0)
    assert await departments(harness, ada, grace) == ["Audit", "Tax"]


async def test_replace_removes_the_people_the_import_does_not_list(harness: Harness) -> None:
    ada, grace, alan = unique_subject(), unique_subject(), unique_subject()
    await import_directory(harness, entry(ada, "Finance", grace), entry(grace, "Finance"), entry(alan, "Lab"))
    grace_pseudonym = await pseudonym(harness, grace)

    counts = await import_directory(harness, entry(ada, "Finance", grace), replace=True)

    assert counts == (0, 0, 1, 2)
    assert await departments(harness, ada, grace, alan) == ["Finance", "", ""]
    # Leaving the directory is not an erasure: the person and their pseudonym stay, and so does the
    # manager link from those still listed.
    assert await pseudonym(harness, grace) == grace_pseudonym
    assert stored_rows(harness) == {await pseudonym(harness, ada): ("Finance", grace_pseudonym, None)}


async def test_a_full_sync_sent_in_chunks_removes_only_who_no_chunk_listed(harness: Harness) -> None:
    stayer, mover, leaver, newcomer = (unique_subject() for _ in range(4))
    await import_directory(harness, entry(stayer, "Finance"), entry(mover, "Finance"), entry(leaver, "Lab"))
    run = str(uuid.uuid4())

    first = await import_directory(harness, entry(stayer, "Finance"), entry(mover, "Tax"), import_id=run)
    last = await import_directory(harness, entry(newcomer, "Lab"), replace=True, import_id=run)

    assert first == (0, 1, 1, 0)
    assert last == (1, 0, 0, 1)
    assert await departments(harness, stayer, mover, leaver, newcomer) == ["Finance", "Tax", "", "Lab"]
    assert {row[2] for row in stored_rows(harness).values()} == {run}


async def test_erasure_removes_the_entry_and_blanks_the_person_as_manager(harness: Harness) -> None:
    manager, report, colleague = unique_subject(), unique_subject(), unique_subject()
    await import_directory(
        harness,
        entry(manager, "Finance"),
        entry(report, "Finance", manager),
        entry(colleague, "Tax", manager),
    )
    manager_pseudonym = await pseudonym(harness, manager)
    report_pseudonym, colleague_pseudonym = (
        await pseudonym(harness, report),
        await pseudonym(harness, colleague),
    )

    await harness.dpo.EraseSubject(
        gdpr_pb2.EraseSubjectRequest(subject=manager, reason="Art. 17 request, ticket DPO-31")
    )

    rows = stored_rows(harness)
    assert manager_pseudonym not in rows
    assert rows[report_pseudonym][:2] == ("Finance", None)
    assert rows[colleague_pseudonym][:2] == ("Tax", None)
    assert manager_pseudonym not in {value for row in rows.values() for value in row}
    document, _ = await export(harness, report)
    assert document["subject"]["directory"]["manager_set"] is False


async def test_export_includes_the_directory_entry(harness: Harness) -> None:
    person, manager, outsider = unique_subject(), unique_subject(), unique_subject()
    await import_directory(harness, entry(person, "Finance", manager))
    await harness.ingest_event(subject=outsider, occurred_at=MARCH)

    document, _ = await export(harness, person)
    outside, _ = await export(harness, outsider)

    directory = document["subject"]["directory"]
    assert directory["department"] == "Finance" and directory["manager_set"] is True
    assert datetime.fromisoformat(directory["updated_at"]).tzinfo is not None
    # The manager is another person: their pseudonym is not part of this subject's export.
    assert await pseudonym(harness, manager) not in json.dumps(document)
    assert outside["subject"]["directory"] is None


async def test_the_import_is_in_the_audit_trail_with_counts_only(harness: Harness) -> None:
    person = unique_subject()
    run = str(uuid.uuid4())
    await import_directory(harness, entry(person, "Finance"), import_id=run)
    audit = await harness.dpo.ListAuditRecords(gdpr_pb2.ListAuditRecordsRequest(action="directory.import"))
    record = audit.audit_records[0]
    assert (record.actor, record.target, record.request_id) == ("dpo:dana", "directory", run)
    assert record.reason == "1 created, 0 updated, 0 unchanged, 0 removed"
    assert person not in str(audit)
    access = [
        e for e in await harness.fake_ingest.settled(1) if e.details.get("action") == "directory.import"
    ]
    assert access and access[0].details.get("resource") == "directory"


async def test_importing_needs_the_directory_import_permission(harness: Harness) -> None:
    request = gdpr_pb2.ImportDirectoryRequest(entries=[entry(unique_subject(), "Finance")])
    for principal in (ANALYST, Principal(subject="auditor:ann", roles=frozenset({"auditor"}))):
        denied = await rpc_error(harness.stub(principal).ImportDirectory(request))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason_of(denied) == "MISSING_PERMISSION"
    assert stored_rows(harness) == {}
    admitted = await harness.stub(ADMIN).ImportDirectory(request)
    assert admitted.created_count == 1


async def test_bad_entries_are_refused_with_their_field_paths(harness: Harness) -> None:
    person = unique_subject()
    refused = await rpc_error(
        harness.dpo.ImportDirectory(
            gdpr_pb2.ImportDirectoryRequest(
                entries=[
                    entry(person, "Finance"),
                    entry("  ", "Finance"),
                    entry(unique_subject(), "someone@example.org"),
                    entry(person.upper(), "Tax"),
                    entry(unique_subject(), "Lab", person),
                ]
            )
        )
    )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(refused) == {"entries[1].subject", "entries[2].department", "entries[3].subject"}
    assert person not in (refused.details() or "")
    # A value wider than its column is refused before the handler (the runtime's generic check).
    too_long = await rpc_error(
        harness.dpo.ImportDirectory(gdpr_pb2.ImportDirectoryRequest(entries=[entry(person, "x" * 129)]))
    )
    assert violated_fields(too_long) == {"entries[0].department"}
    empty = await rpc_error(harness.dpo.ImportDirectory(gdpr_pb2.ImportDirectoryRequest(replace=True)))
    assert violated_fields(empty) == {"entries"}
    too_many = [entry(f"p{i}@example.org") for i in range(5001)]
    refused = await rpc_error(harness.dpo.ImportDirectory(gdpr_pb2.ImportDirectoryRequest(entries=too_many)))
    assert violated_fields(refused) == {"entries"}
    assert stored_rows(harness) == {}


async def test_a_full_call_of_five_thousand_people_is_one_import(harness: Harness) -> None:
    tag = uuid.uuid4().hex[:8]
    people = [f"p{i}-{tag}@example.org" for i in range(5000)]
    entries = [entry(p, f"Dept {i % 7}", people[0] if i else "") for i, p in enumerate(people)]
    assert await import_directory(harness, *entries) == (5000, 0, 0, 0)
    assert await departments(harness, people[0], people[4999]) == ["Dept 0", "Dept 1"]
    rows: dict[str, Any] = stored_rows(harness)
    assert len(rows) == 5000


def test_the_migration_matches_the_model(database_url: str, tmp_path: Path) -> None:
    url = database_url or f"sqlite:///{tmp_path / 'gdpr.db'}"
    with migrated_engine(url, "gdpr") as engine, engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []
