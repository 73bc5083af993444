"""Retention (dry run and real shredding) and KEK rotation over gRPC, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from pathlib import Path

import grpc
from awareness.gdpr.v1 import gdpr_pb2
from sqlalchemy import create_engine, text

from services.gdpr.domain.keys import Keyring, load_keyring
from services.gdpr.keysource import single_kek_id
from tests.gdpr.conftest import ADMIN, Harness, running_harness
from tests.gdpr.test_service_keys_and_erasure import lookup, unique_subject
from tests.grpc_errors import reason_of, rpc_error


def months_ago(months: int) -> datetime:
    """The 15th of the month ``months`` before the current one (mid-month: far from any boundary)."""
    now = datetime.now(UTC)
    index = now.year * 12 + (now.month - 1) - months
    return datetime(index // 12, index % 12 + 1, 15, 12, 0, tzinfo=UTC)


def period_of(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


async def issue(harness: Harness, subject: str, moment: datetime, event_type: str) -> gdpr_pb2.SubjectKey:
    reply = await harness.internal.GetSubjectKeys(
        gdpr_pb2.GetSubjectKeysRequest(lookups=[lookup(subject, moment, event_type)])
    )
    key: gdpr_pb2.SubjectKey = reply.keys[0]
    return key


async def readable(harness: Harness, keys: list[gdpr_pb2.SubjectKey]) -> dict[tuple[str, str], bytes | None]:
    reply = await harness.internal.UnwrapDataKeys(
        gdpr_pb2.UnwrapDataKeysRequest(
            keys=[gdpr_pb2.DataKeyRef(pseudonym=k.pseudonym, key_period=k.key_period) for k in keys]
        )
    )
    return {
        (item.pseudonym, item.key_period): item.data_key if item.WhichOneof("result") == "data_key" else None
        for item in reply.keys
    }


async def test_retention_dry_run_shreds_nothing_and_the_real_run_exactly_the_expired_period_keys(
    harness: Harness,
) -> None:
    alice, bob = unique_subject(), unique_subject()
    old, middle, current = months_ago(40), months_ago(20), months_ago(0)
    keys = {
        # login.failed is kept 900 days (~29.6 months): 40 months ago expired, 20 months ago kept.
        "alice-old-login": await issue(harness, alice, old, "login.failed"),
        "alice-middle-login": await issue(harness, alice, middle, "login.failed"),
        # Everything else falls under the default, shortened to 365 days.
        "bob-middle-click": await issue(harness, bob, middle, "phishing.clicked"),
        "bob-old-click": await issue(harness, bob, old, "phishing.clicked"),
        # The longest rule of a key's event types decides: a 20-month-old key also holding login.failed stays.
        "alice-middle-mixed": await issue(harness, alice, middle, "phishing.clicked"),
        "bob-current-click": await issue(harness, bob, current, "phishing.clicked"),
    }
    assert keys["alice-middle-mixed"].key_id == keys["alice-middle-login"].key_id
    for rule in (
        gdpr_pb2.RetentionRule(retention_days=365),
        gdpr_pb2.RetentionRule(event_type="login.failed", retention_days=900),
    ):
        await harness.dpo.SetRetentionRule(
            gdpr_pb2.SetRetentionRuleRequest(rule=rule, reason="shortened for test")
        )
    expected_shredded = {"alice-old-login", "bob-middle-click", "bob-old-click"}
    everything = list(keys.values())
    before = await readable(harness, everything)
    assert all(value is not None for value in before.values())

    dry = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(dry_run=True, reason="preview"))

    assert dry.dry_run and dry.keys_shredded == len(expected_shredded)
    assert await readable(harness, everything) == before
    expected_entries = sorted(
        [
            (period_of(old), "login.failed", 1),
            (period_of(middle), "phishing.clicked", 1),
            (period_of(old), "phishing.clicked", 1),
        ]
    )
    assert sorted((e.key_period, e.event_type, e.pseudonym_count) for e in dry.entries) == expected_entries

    real = await harness.dpo.ApplyRetention(
        gdpr_pb2.ApplyRetentionRequest(request_id="retention-1", reason="daily")
    )

    assert not real.dry_run and real.keys_shredded == len(expected_shredded)
    assert sorted((e.key_period, e.event_type, e.pseudonym_count) for e in real.entries) == expected_entries
    after = await readable(harness, everything)
    for name, key in keys.items():
        value = after[(key.pseudonym, key.key_period)]
        if name in expected_shredded:
            assert value is None, name
        else:
            assert value == key.data_key, name
    replay = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(request_id="retention-1"))
    assert (replay.keys_shredded, list(replay.entries)) == (real.keys_shredded, list(real.entries))
    again = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest())
    assert again.keys_shredded == 0
    assert harness.metrics.registry.get_sample_value("awareness_gdpr_retention_keys_shredded_total") == 3


async def test_zero_days_keeps_an_event_type_until_erasure_and_rules_list_default_first(
    harness: Harness,
) -> None:
    subject = unique_subject()
    ancient = months_ago(100)
    kept = await issue(harness, subject, ancient, "training.completed")
    await harness.dpo.SetRetentionRule(
        gdpr_pb2.SetRetentionRuleRequest(rule=gdpr_pb2.RetentionRule(retention_days=30))
    )
    await harness.dpo.SetRetentionRule(
        gdpr_pb2.SetRetentionRuleRequest(
            rule=gdpr_pb2.RetentionRule(event_type="training.completed", retention_days=0)
        )
    )
    report = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest())
    assert report.keys_shredded == 0
    assert (await readable(harness, [kept]))[(kept.pseudonym, kept.key_period)] == kept.data_key
    rules = await harness.dpo.ListRetentionRules(gdpr_pb2.ListRetentionRulesRequest())
    assert [(r.name, r.retention_days, r.actor) for r in rules.rules] == [
        ("retentionRules/default", 30, "dpo:dana"),
        ("retentionRules/training.completed", 0, "dpo:dana"),
    ]
    bad = await rpc_error(
        harness.dpo.SetRetentionRule(
            gdpr_pb2.SetRetentionRuleRequest(
                rule=gdpr_pb2.RetentionRule(event_type="Bad Type", retention_days=-1)
            )
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A period past any representable date is refused, so ApplyRetention can never overflow.
    huge = await rpc_error(
        harness.dpo.SetRetentionRule(
            gdpr_pb2.SetRetentionRuleRequest(rule=gdpr_pb2.RetentionRule(retention_days=2_147_483_646))
        )
    )
    assert huge.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest(dry_run=True))).keys_shredded == 0


async def test_default_retention_is_seven_years(harness: Harness) -> None:
    rules = await harness.dpo.ListRetentionRules(gdpr_pb2.ListRetentionRulesRequest())
    assert [(r.name, r.retention_days) for r in rules.rules] == [("retentionRules/default", 2557)]
    subject = unique_subject()
    six_years = await issue(harness, subject, months_ago(6 * 12 + 6), "phishing.clicked")
    eight_years = await issue(harness, subject, months_ago(8 * 12), "phishing.clicked")
    report = await harness.dpo.ApplyRetention(gdpr_pb2.ApplyRetentionRequest())
    assert report.keys_shredded == 1
    after = await readable(harness, [six_years, eight_years])
    assert after[(six_years.pseudonym, six_years.key_period)] == six_years.data_key
    assert after[(eight_years.pseudonym, eight_years.key_period)] is None


def wrapped_keys(harness: Harness) -> dict[str, tuple[str, bytes]]:
    engine = create_engine(harness.database_url)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SET search_path TO awareness_gdpr"))
        rows = connection.execute(text("SELECT key_id, kek_id, wrapped FROM data_keys")).all()
    engine.dispose()
    return {row.key_id: (row.kek_id, bytes(row.wrapped)) for row in rows}


async def test_kek_rotation_rewraps_every_key_and_all_data_stays_readable(harness: Harness) -> None:
    keys = [
        await issue(harness, unique_subject(), months_ago(months), "phishing.clicked")
        for months in (0, 1, 2, 13, 30)
    ]
    before = await readable(harness, keys)
    stored_before = wrapped_keys(harness)
    keyring_file = harness.data_dir / "gdpr-kek.json"
    old_kek_id = load_keyring(keyring_file).active_id
    assert {kek_id for kek_id, _ in stored_before.values()} == {old_kek_id}

    reply = await harness.stub(ADMIN).RotateKek(
        gdpr_pb2.RotateKekRequest(request_id="rotate-1", reason="yearly")
    )

    assert reply.keys_rewrapped == len(keys) and reply.kek_id != old_kek_id
    assert list(reply.retired_kek_ids) == [old_kek_id]
    stored_after = wrapped_keys(harness)
    assert set(stored_after) == set(stored_before)
    for key_id, (kek_id, wrapped) in stored_after.items():
        assert kek_id == reply.kek_id
        assert wrapped != stored_before[key_id][1]
    keyring = load_keyring(keyring_file)
    assert (keyring.active_id, sorted(keyring)) == (reply.kek_id, [reply.kek_id])
    assert await readable(harness, keys) == before
    # Keys created after the rotation are wrapped under the new KEK too.
    fresh = await issue(harness, unique_subject(), months_ago(0), "phishing.clicked")
    assert wrapped_keys(harness)[fresh.key_id][0] == reply.kek_id
    replay = await harness.stub(ADMIN).RotateKek(gdpr_pb2.RotateKekRequest(request_id="rotate-1"))
    assert (replay.kek_id, replay.keys_rewrapped) == (reply.kek_id, reply.keys_rewrapped)
    denied = await rpc_error(harness.dpo.RotateKek(gdpr_pb2.RotateKekRequest()))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_rotation_with_a_read_only_secret_is_refused_and_a_restart_rewraps(
    tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "var"
    async with running_harness(data_dir, database_url) as first:
        keys = [await issue(first, unique_subject(), months_ago(m), "login.failed") for m in (0, 5)]
        before = await readable(first, keys)
    dev_keyring = load_keyring(data_dir / "gdpr-kek.json")
    # As the Helm chart mounts it: a Secret file holding base64 text of 32 random bytes.
    new_kek = bytes(range(32))
    single = tmp_path / "kek"
    single.write_text(base64.b64encode(new_kek).decode() + "\n")
    secret_env = {
        "AWARENESS_KEK_FILE": str(single),
        "AWARENESS_LOOKUP_SECRET_FILE": str(data_dir / "gdpr-lookup-secret"),
    }
    async with running_harness(data_dir, database_url, **secret_env) as only_new:
        # The old KEK is missing from this Secret: old keys cannot be read (and nothing crashes).
        refused = await rpc_error(
            only_new.internal.UnwrapDataKeys(
                gdpr_pb2.UnwrapDataKeysRequest(
                    keys=[gdpr_pb2.DataKeyRef(pseudonym=keys[0].pseudonym, key_period=keys[0].key_period)]
                )
            )
        )
        assert refused.code() == grpc.StatusCode.INTERNAL and reason_of(refused) == "KEY_UNWRAP_FAILED"
    # The documented rotation: the Secret holds the new KEK as active and the old one beside it.
    rotated = Keyring(
        active_id=single_kek_id(new_kek),
        keys={**{k: dev_keyring[k] for k in dev_keyring}, single_kek_id(new_kek): new_kek},
    )
    both = tmp_path / "kek.json"
    both.write_text(rotated.to_json())
    async with running_harness(
        data_dir, database_url, **{**secret_env, "AWARENESS_KEK_FILE": str(both)}
    ) as restarted:
        refused = await rpc_error(restarted.stub(ADMIN).RotateKek(gdpr_pb2.RotateKekRequest()))
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason_of(refused) == "KEK_READ_ONLY" and "Secret" in (refused.details() or "")
        assert restarted.service.store.rewrap_pending(actor="service:gdpr") == len(keys)
        assert {kek for kek, _ in wrapped_keys(restarted).values()} == {single_kek_id(new_kek)}
        assert await readable(restarted, keys) == before
        audit = await restarted.dpo.ListAuditRecords(gdpr_pb2.ListAuditRecordsRequest(action="kek.rewrap"))
        assert [r.actor for r in audit.audit_records] == ["service:gdpr"]
    assert json.loads(both.read_text())["active"] == single_kek_id(new_kek)  # a Secret is never written
