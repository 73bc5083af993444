"""The admin pages' pure rules (the new-key form, the forms already used, keys and health as rows),
and the key creation they share with `awareness keys create`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from services.gateway import cli, repository
from services.gateway.domain import keys
from services.portal.domain import admin
from services.runtime import db, migrations
from services.runtime.errors import InvalidArgumentError

NOW = datetime(2026, 12, 6, 9, 30, tzinfo=UTC)


def _form(**fields: list[str]) -> dict[str, list[str]]:
    return {"name": ["gophish webhook"], "roles": ["integration"], "form_id": [str(uuid.uuid4())], **fields}


def test_the_new_key_form_asks_for_a_named_key_with_roles() -> None:
    wanted = admin.new_key_form(_form(roles=["analyst", "auditor", "analyst"], expires_in_days=["30"]))
    assert wanted.name == "gophish webhook"
    assert wanted.roles == ("analyst", "auditor")
    assert wanted.expires_in_days == 30
    assert admin.new_key_form(_form(expires_in_days=[""])).expires_in_days is None


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ["  "]}, "name"),
        ({"name": ["x" * 201]}, "name"),
        ({"roles": []}, "roles"),
        ({"roles": ["service"]}, "roles"),  # for services calling each other only
        ({"roles": ["superuser"]}, "roles"),
        ({"expires_in_days": ["0"]}, "expires_in_days"),
        ({"expires_in_days": ["soon"]}, "expires_in_days"),
        ({"form_id": [""]}, "form_id"),
    ],
)
def test_a_new_key_form_the_page_never_offers_is_refused(fields: dict[str, list[str]], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        admin.new_key_form(_form(**fields))
    assert [violation.field for violation in raised.value.violations] == [field]


def test_the_page_offers_every_role_but_service() -> None:
    assert "service" not in admin.ASSIGNABLE_ROLES
    assert {"admin", "analyst", "integration"} <= set(admin.ASSIGNABLE_ROLES)
    assert admin.role_permissions("admin") == "every permission"
    assert admin.role_permissions("integration") == "audit:verify, ingest:write, timestamp:request"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_creation_form_sent_again_creates_nothing_and_shows_no_key() -> None:
    clock = Clock()
    used = admin.UsedForms(ttl_seconds=60, clock=clock)
    assert used.claim("form-1") is None
    assert used.claim("form-1") == ""  # a double click while the first is still creating
    used.settle("form-1", "key-1")
    assert used.claim("form-1") == "key-1"
    assert used.claim("form-2") is None
    used.release("form-2")  # refused: may be sent again after a correction
    assert used.claim("form-2") is None
    clock.now = 61
    assert used.claim("form-1") is None  # forgotten after a while


def test_used_forms_are_bounded() -> None:
    used = admin.UsedForms(capacity=2, clock=Clock())
    for form_id in ("a", "b", "c"):
        assert used.claim(form_id) is None
    assert used.claim("a") is None  # the oldest made room


def _record(key_id: str, created: datetime, revoked: datetime | None = None) -> repository.KeyRecord:
    return repository.KeyRecord(
        key_id=key_id,
        name=f"key {key_id}",
        secret_hash="0" * 64,
        roles=frozenset({"auditor", "analyst"}),
        created_at=created,
        expires_at=None,
        revoked_at=revoked,
    )


def test_keys_are_listed_newest_first_with_the_cli_states() -> None:
    rows = admin.key_rows(
        [_record("a", NOW - timedelta(days=2)), _record("b", NOW, revoked=NOW)], now=NOW, state=cli.key_state
    )
    assert [(row.key_id, row.state, row.revocable) for row in rows] == [
        ("b", "revoked", False),
        ("a", "active", True),
    ]
    assert rows[1].roles == ("analyst", "auditor")


def test_health_rows_name_every_service_and_count_an_unused_breaker_as_closed() -> None:
    rows = admin.health_rows(
        ["ingest", "scoring", "gdpr"],
        {"ingest": "SERVING", "scoring": "UNREACHABLE (UNAVAILABLE)", "gdpr": "SERVING"},
        {"gdpr": "open"},
    )
    assert [(row.name, row.breaker, row.healthy) for row in rows] == [
        ("ingest", "closed", True),
        ("scoring", "closed", False),
        ("gdpr", "open", False),
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Session]:
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'gateway.db'}", service="gateway")
    migrations.upgrade("gateway", engine)
    try:
        with db.transaction(db.session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def test_a_stored_key_keeps_only_its_secrets_hash(store: Session) -> None:
    new_key, record = cli.store_new_key(store, name="ana", roles=["analyst"], expires_in_days=7, now=NOW)
    assert keys.parse_token(new_key.token) == (record.key_id, new_key.secret)
    found = repository.find_key(store, key_id=record.key_id)
    assert found is not None
    assert found.secret_hash == keys.hash_secret(new_key.secret) != new_key.secret
    assert found.roles == {"analyst"}
    assert found.expires_at == NOW + timedelta(days=7)
    assert cli.created_key_details(record) == {
        "roles": "analyst",
        "expire_time": found.expires_at.isoformat(),
    }


@pytest.mark.parametrize(
    ("name", "roles", "days", "field"),
    [
        ("svc", ["service"], None, "roles"),
        ("none", [], None, "roles"),
        ("odd", ["wizard"], None, "roles"),
        ("", ["analyst"], None, "name"),
        ("late", ["analyst"], 0, "expires_in_days"),
    ],
)
def test_the_shared_key_creation_refuses_what_the_cli_refuses(
    store: Session, name: str, roles: list[str], days: int | None, field: str
) -> None:
    with pytest.raises(cli.InvalidKeyRequestError) as raised:
        cli.store_new_key(store, name=name, roles=roles, expires_in_days=days, now=NOW)
    assert raised.value.field == field
    assert repository.list_keys(store) == []


def test_a_key_change_record_names_the_key_and_who_changed_it() -> None:
    record = cli.key_change_record(
        principal="apikey:0123456789abcdef",
        method="awareness portal keys revoke",
        action="api_key.revoke",
        key_id="fedcba9876543210",
        details={},
    )
    assert (record.principal, record.action, record.resource, record.outcome) == (
        "apikey:0123456789abcdef",
        "api_key.revoke",
        "apiKeys/fedcba9876543210",
        "OK",
    )
