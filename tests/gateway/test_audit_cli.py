"""`awareness audit` and the access records of `awareness keys create|revoke`, against a real suite.

`awareness up` (SQLite) as real processes; the commands run as a user runs them: a separate process,
an API key in AWARENESS_API_KEY, the gateway's URL. Keys are created and revoked with the real CLI,
which appends their access records to the running ingest with the gateway's certificate.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.gateway.cli import AUDIT_COLUMNS
from tests.support.resources import free_port
from tests.support.suite import UpSuite, awareness_up, run_module

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SUBJECT = f"audit.cli.{uuid.uuid4().hex[:8]}@example.org"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpSuite]:
    with awareness_up(tmp_path_factory.mktemp("audit-cli")) as running:
        yield running


def audit(suite: UpSuite, key: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AWARENESS_API_KEY"}
    env["AWARENESS_API_KEY"] = key
    return run_module("services.cli", "audit", "--gateway", suite.url, *argv, env=env)


def records(suite: UpSuite, key: str, *argv: str) -> list[dict[str, Any]]:
    result = audit(suite, key, "--json", *argv)
    assert result.returncode == 0, result.stderr
    found: list[dict[str, Any]] = json.loads(result.stdout)["accessRecords"]
    return found


def settled(suite: UpSuite, key: str, count: int, *argv: str) -> list[dict[str, Any]]:
    """The records matching ``argv`` once at least ``count`` are listed (they arrive in batches)."""
    deadline = time.monotonic() + 60
    while True:
        found = records(suite, key, *argv)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def key_id(token: str) -> str:
    return token.split("_")[1]


def test_key_changes_are_recorded_and_the_auditor_lists_them(suite: UpSuite) -> None:
    auditor = suite.create_key("auditor", name="audit-cli-auditor")
    dpo = suite.create_key("dpo", name="Dana Person")  # a name that is personal data
    doomed = suite.create_key("integration", name="audit-cli-doomed")
    revoked = suite.cli("keys", "revoke", key_id(doomed))
    assert revoked.returncode == 0 and "WARNING" not in revoked.stderr, revoked.stderr

    created = settled(suite, auditor, 1, "--action", "api_key.create", "--resource", f"apiKeys/{key_id(dpo)}")
    assert [(r["principal"], r["outcome"], r["service"], r["details"]) for r in created] == [
        ("service:gateway", "OK", "gateway", {"roles": "dpo"})
    ]
    gone = settled(suite, auditor, 1, "--action", "api_key.revoke")
    assert [r["resource"] for r in gone] == [f"apiKeys/{key_id(doomed)}"]
    assert "Dana Person" not in json.dumps(created)

    # A recorded action about a person: the record names the pseudonym only.
    with httpx.Client(base_url=suite.url, timeout=30) as http:
        granted = http.post(
            "/v1/consents:grant",
            json={"subject": SUBJECT, "purpose": "analytics"},
            headers={"Authorization": f"Bearer {dpo}"},
        )
    assert granted.status_code == 200, granted.text
    pseudonym = granted.json()["record"]["pseudonym"]
    about = settled(suite, auditor, 1, "--pseudonym", pseudonym)
    assert [(r["action"], r["principal"], r["subjectPseudonyms"]) for r in about] == [
        ("consent.grant", f"apikey:{key_id(dpo)}", [pseudonym])
    ]
    assert [r["action"] for r in records(suite, auditor, "--principal", f"apikey:{key_id(dpo)}")] == [
        "consent.grant"
    ]

    # The table: a header, then one line per record, newest first, with the event to verify.
    table = audit(suite, auditor, "--since", "1h", "--limit", "2")
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    assert header.split() == list(AUDIT_COLUMNS)
    assert len(lines) == 2 and "more records match" in table.stderr
    newest = records(suite, auditor, "--limit", "2")
    for line, record in zip(lines, newest, strict=True):
        cells = line.split()
        assert cells[1:4] == [record["principal"], record["action"], record.get("resource") or "-"]
        assert cells[-1] == record["name"].removeprefix("events/")
    consent_line = audit(suite, auditor, "--pseudonym", pseudonym).stdout.splitlines()[1]
    assert pseudonym in consent_line.split() and "consent.grant" in consent_line
    assert SUBJECT not in table.stdout + consent_line

    # Time filters: nothing before the suite existed; the filters combine.
    assert records(suite, auditor, "--until", "2000-01-01") == []
    assert (
        records(suite, auditor, "--since", "2000-01-01T00:00:00+01:00", "--action", "api_key.revoke") == gone
    )


def test_refusals_and_bad_options_exit_non_zero_with_one_line(suite: UpSuite) -> None:
    analyst = suite.create_key("analyst")
    refused = audit(suite, analyst)
    assert refused.returncode == 1
    assert "403" in refused.stderr and "MISSING_PERMISSION" in refused.stderr
    auditor = suite.create_key("auditor")
    for argv in (("--since", "yesterday"), ("--limit", "0")):
        bad = audit(suite, auditor, *argv)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
        assert "Traceback" not in bad.stderr
    env = {k: v for k, v in os.environ.items() if k != "AWARENESS_API_KEY"}
    missing = run_module("services.cli", "audit", "--gateway", suite.url, env=env)
    assert missing.returncode == 2 and "AWARENESS_API_KEY" in missing.stderr


def test_a_key_change_stands_when_ingest_cannot_record_it_and_says_so(suite: UpSuite) -> None:
    """Ingest unreachable: the key is created and works; stderr names the record that is missing."""
    env = {**suite.env, "AWARENESS_INGEST_TARGET": f"127.0.0.1:{free_port()}"}
    result = run_module("services.cli", "keys", "create", "--name", "offline", "--role", "auditor", env=env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[0]
    assert "WARNING" in result.stderr and "not written to the event log" in result.stderr
    assert f"apiKeys/{key_id(token)}" in result.stderr and "The key change stands" in result.stderr
    listed = audit(
        suite, token, "--action", "api_key.create", "--resource", f"apiKeys/{key_id(token)}", "--json"
    )
    assert listed.returncode == 0, listed.stderr  # the key works
    assert json.loads(listed.stdout)["accessRecords"] == []  # and its creation is not in the log
