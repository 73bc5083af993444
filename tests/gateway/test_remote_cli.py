"""`awareness events` and `awareness policies` against a real gateway (`awareness up`, SQLite).

The commands run as a user runs them: a separate process, an API key in AWARENESS_API_KEY,
the gateway's URL; the events and policies they read are created over HTTP beforehand.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.support.suite import UpSuite, awareness_up, run_module

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpSuite]:
    with awareness_up(tmp_path_factory.mktemp("remote-cli")) as running:
        yield running


def awareness(suite: UpSuite, key: str | None, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AWARENESS_API_KEY"}
    if key is not None:
        env["AWARENESS_API_KEY"] = key
    command, action, *rest = argv
    return run_module("services.cli", command, action, "--gateway", suite.url, *rest, env=env)


def answer(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _append(suite: UpSuite, key: str, *, source: str, subject: str) -> str:
    event_id = str(uuid.uuid4())
    response = httpx.post(
        f"{suite.url}/v1/events",
        json={
            "eventId": event_id,
            "type": "phishing.clicked",
            "source": source,
            "subject": subject,
            "occurredAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "severity": "SEVERITY_MEDIUM",
            "summary": "clicked the test link",
        },
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return event_id


def test_an_analyst_lists_reads_and_labels_events(suite: UpSuite) -> None:
    source = f"cli-{uuid.uuid4().hex[:8]}"
    event_id = _append(suite, suite.create_key("integration"), source=source, subject="cli.user@example.org")
    analyst = suite.create_key("analyst")

    listed = answer(awareness(suite, analyst, "events", "list", "--source", source))
    assert [event["eventId"] for event in listed["events"]] == [event_id]

    event = answer(awareness(suite, analyst, "events", "get", event_id))
    assert event["subject"] == "cli.user@example.org"  # analysts read personal data

    labelled = answer(
        awareness(
            suite, analyst, "events", "label", event_id,
            "--label", "true_positive", "--note", "reported by the user", "--triage-state", "closed",
        )
    )  # fmt: skip
    assert labelled["metadata"]["label"] == "LABEL_TRUE_POSITIVE"
    assert labelled["metadata"]["triageState"] == "TRIAGE_STATE_CLOSED"
    closed = answer(
        awareness(suite, analyst, "events", "list", "--source", source, "--triage-state", "closed")
    )
    assert [event["eventId"] for event in closed["events"]] == [event_id]
    assert (
        answer(awareness(suite, analyst, "events", "list", "--source", source, "--label", "false_positive"))
        == {}
    )


def test_a_policy_author_lists_and_reads_policies(suite: UpSuite) -> None:
    author = suite.create_key("policy_author")
    policy_id = f"cli-{uuid.uuid4().hex[:8]}"
    created = httpx.post(
        f"{suite.url}/v1/policies",
        params={"policyId": policy_id},
        json={"title": "CLI click", "rule": 'event.type == "phishing.clicked"', "severity": "SEVERITY_LOW"},
        headers={"Authorization": f"Bearer {author}"},
        timeout=30,
    )
    assert created.status_code == 200, created.text

    drafts = answer(awareness(suite, author, "policies", "list", "--state", "draft", "--page-size", "1000"))
    assert f"policies/{policy_id}" in [policy["name"] for policy in drafts["policies"]]
    active = answer(awareness(suite, author, "policies", "list", "--state", "active", "--page-size", "1000"))
    assert f"policies/{policy_id}" not in [policy["name"] for policy in active.get("policies", [])]
    policy = answer(awareness(suite, author, "policies", "get", policy_id))
    assert (policy["name"], policy["title"], policy["state"]) == (
        f"policies/{policy_id}",
        "CLI click",
        "STATE_DRAFT",
    )


def test_refusals_name_the_status_and_reason_and_exit_non_zero(suite: UpSuite) -> None:
    author = suite.create_key("policy_author")
    missing = awareness(suite, author, "events", "get", str(uuid.uuid4()))
    assert (missing.returncode, missing.stdout) == (1, "")
    assert "404 EVENT_NOT_FOUND" in missing.stderr

    forbidden = awareness(suite, author, "events", "label", str(uuid.uuid4()), "--label", "true_positive")
    assert forbidden.returncode == 1
    assert "403 MISSING_PERMISSION" in forbidden.stderr

    unknown_key = "awk_" + "0" * 16 + "_" + "A" * 43
    refused = awareness(suite, unknown_key, "policies", "list")
    assert refused.returncode == 1
    assert "401" in refused.stderr
    assert unknown_key not in refused.stderr + refused.stdout

    no_key = awareness(suite, None, "policies", "list")
    assert no_key.returncode == 2
    assert "AWARENESS_API_KEY" in no_key.stderr


def test_an_unreachable_gateway_is_one_line_not_a_traceback() -> None:
    result = run_module(
        "services.cli",
        "policies",
        "list",
        "--gateway",
        "http://127.0.0.1:9",
        env={**os.environ, "AWARENESS_API_KEY": "awk_x"},
    )
    assert result.returncode == 1
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
