"""GoPhish mapping and signatures, API key format, and the keys CLI."""

from __future__ import annotations

import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from services.gateway.bootstrap import bootstrap_dev
from services.gateway.config import GOPHISH_SECRET_FILE
from services.gateway.domain import gophish, keys

PAYLOAD = {
    "campaign_id": 3,
    "email": "eve@example.org",
    "time": "2024-02-03T04:05:06Z",
    "message": "Email Reported",
}
ID_KEY = gophish.event_id_key(b"w" * 32)


@pytest.mark.parametrize(
    ("message", "event_type"),
    [
        ("Email Sent", "phishing.email_sent"),
        ("Email Opened", "phishing.email_opened"),
        ("Clicked Link", "phishing.clicked"),
        ("Submitted Data", "phishing.submitted_data"),
        ("Email Reported", "phishing.reported"),
    ],
)
def test_gophish_events_map_to_awareness_types(message: str, event_type: str) -> None:
    mapped = gophish.map_event({**PAYLOAD, "message": message}, id_key=ID_KEY)
    assert mapped is not None
    assert mapped.type == event_type
    assert mapped.subject == "eve@example.org"
    assert mapped.as_json()["source"] == "gophish"


def test_event_id_is_stable_for_redelivery_and_differs_per_event() -> None:
    first = gophish.map_event(PAYLOAD, id_key=ID_KEY)
    again = gophish.map_event(dict(PAYLOAD), id_key=ID_KEY)
    other = gophish.map_event({**PAYLOAD, "time": "2024-02-03T04:05:07Z"}, id_key=ID_KEY)
    assert first is not None and again is not None and other is not None
    assert first.event_id == again.event_id != other.event_id


def test_event_id_is_keyed_by_the_webhook_secret_not_a_public_namespace() -> None:
    import uuid

    mapped = gophish.map_event(PAYLOAD, id_key=ID_KEY)
    other_secret = gophish.map_event(PAYLOAD, id_key=gophish.event_id_key(b"x" * 32))
    assert mapped is not None and other_secret is not None
    assert mapped.event_id != other_secret.event_id
    # The id the gateway derived before: a UUIDv5 anyone could recompute from a guessed address.
    public = uuid.uuid5(
        uuid.UUID("6f2b1c0e-3d4a-5b6c-8d7e-9f0a1b2c3d4e"),
        "\n".join(("3", "eve@example.org", "Email Reported", "2024-02-03T04:05:06Z")),
    )
    assert mapped.event_id != str(public)
    assert uuid.UUID(mapped.event_id).version == 8 and uuid.UUID(mapped.event_id).variant == uuid.RFC_4122


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({**PAYLOAD, "email": ""}, "email"),
        ({**PAYLOAD, "time": "yesterday"}, "time"),
        ({**PAYLOAD, "campaign_id": None}, "campaign_id"),
        ({**PAYLOAD, "message": 5}, "message"),
    ],
)
def test_bad_gophish_payloads_name_the_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(gophish.WebhookError) as caught:
        gophish.map_event(payload, id_key=ID_KEY)
    assert caught.value.field == field


def test_signature_is_hmac_sha256_of_the_raw_body() -> None:
    secret, body = b"s" * 32, b'{"a": 1}'
    import hashlib
    import hmac

    header = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert gophish.signature_valid(secret, body, header)
    assert not gophish.signature_valid(secret, body + b" ", header)
    assert not gophish.signature_valid(b"t" * 32, body, header)
    assert not gophish.signature_valid(secret, body, None)


def test_api_keys_parse_and_hash() -> None:
    new = keys.generate_key()
    assert keys.parse_token(new.token) == (new.key_id, new.secret)
    assert keys.secret_matches(new.secret, keys.hash_secret(new.secret))
    assert not keys.secret_matches(new.secret + "x", keys.hash_secret(new.secret))
    assert keys.parse_token("awk_short_x") is None
    assert keys.hash_secret(new.secret) != new.secret


def test_bootstrap_creates_the_dev_webhook_secret_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWARENESS_GOPHISH_SECRET", raising=False)
    monkeypatch.delenv("AWARENESS_GOPHISH_SECRET_FILE", raising=False)
    bootstrap_dev(tmp_path)
    secret = (tmp_path / GOPHISH_SECRET_FILE).read_bytes()
    bootstrap_dev(tmp_path)
    assert (tmp_path / GOPHISH_SECRET_FILE).read_bytes() == secret
    assert len(secret) >= 32
    assert oct((tmp_path / GOPHISH_SECRET_FILE).stat().st_mode & 0o777) == "0o600"


def _cli(*argv: str) -> tuple[int, str, str]:
    from services.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_keys_cli_create_list_revoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWARENESS_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code, token, _ = _cli("keys", "create", "--name", "ci-bot", "--role", "integration", "--role", "analyst")
    assert code == 0
    key_id, secret = keys.parse_token(token.strip()) or ("", "")
    assert key_id and secret
    stored = (tmp_path / "gateway.db").read_bytes()
    assert secret.encode() not in stored  # only the hash is kept
    assert keys.hash_secret(secret).encode() in stored
    code, listing, _ = _cli("keys", "list")
    assert key_id in listing and "active" in listing and "analyst,integration" in listing
    assert secret not in listing
    assert _cli("keys", "revoke", key_id)[0] == 0
    assert "revoked" in _cli("keys", "list")[1]
    assert _cli("keys", "revoke", "ffffffffffffffff")[0] == 1
    assert _cli("keys", "create", "--name", "x", "--role", "wizard")[0] == 2
    assert _cli("keys", "create", "--name", "x", "--role", "service")[0] == 2
    assert os.environ["AWARENESS_DATA_DIR"] == str(tmp_path)


@pytest.mark.postgres
def test_key_store_migrates_and_works_on_postgresql(fresh_postgres_db: str) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import inspect

    from services.gateway import repository
    from services.runtime import db, migrations

    engine = db.create_db_engine(fresh_postgres_db, service="gateway")
    try:
        migrations.upgrade("gateway", engine)
        migrations.upgrade("gateway", engine)  # idempotent
        assert "api_keys" in inspect(engine).get_table_names(schema="awareness_gateway")
        new = keys.generate_key()
        with db.transaction(db.session_factory(engine)) as session:
            repository.add_key(
                session,
                key_id=new.key_id,
                name="pg",
                secret_hash=keys.hash_secret(new.secret),
                roles=["auditor"],
                created_at=datetime.now(UTC),
                expires_at=None,
            )
        with db.session_factory(engine)() as session:
            found = repository.find_key(session, key_id=new.key_id)
        assert found is not None and found.roles == frozenset({"auditor"})
        assert found.usable(now=datetime.now(UTC))
    finally:
        engine.dispose()
