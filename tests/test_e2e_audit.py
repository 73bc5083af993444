"""Access records end to end: every audited action through the gateway lands in the log.

`awareness up` on free ports; each action is taken over HTTP as a role that may. An administrator
creates and revokes an API key on the portal's admin page, through the gateway, as a browser
would post its forms; the CLI's path (`awareness keys create|revoke`, writing the gateway's store
itself) is covered too. Then an auditor lists the access records, finds each action with its
principal, resource, pseudonym and outcome, and checks every record's inclusion proof with
`awareness verify`, as a third party would. No identifier, summary or note of the person, no
key's token and no key's name appears in any record.
"""

from __future__ import annotations

import html
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SUBJECT = f"audit.person.{uuid.uuid4().hex[:8]}@example.org"
SUMMARY = f"summary-{uuid.uuid4().hex}"
NOTE = f"note-{uuid.uuid4().hex}"
# Keys' names are free text and may name a person: the records must not carry them.
PORTAL_KEY_NAME = f"laptop of k.{uuid.uuid4().hex[:8]}@example.org"
CLI_KEY_NAME = f"mail gateway of m.{uuid.uuid4().hex[:8]}@example.org"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory, suite_backend: Backend) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp(f"audit-e2e-{suite_backend.name}")
    extra = {
        # A small training set, so that TrainModel takes seconds.
        "AWARENESS_SCORING_SYNTHETIC_PEOPLE": "60",
        "AWARENESS_SCORING_SYNTHETIC_DAYS": "21",
        "AWARENESS_GATEWAY_RATE_PRINCIPAL_PER_MIN": "100000",
    }
    with awareness_up(data_dir, suite_backend, extra_env=extra) as running:
        yield running


def _key_id(token: str) -> str:
    """The id part of an API key token (``awk_<id>_<secret>``), as the principal names it."""
    return token.split("_")[1]


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json() if response.text else {}


def _field(page: str, name: str, *, within: str = "") -> str:
    """The value of the form field ``name`` on a portal page, in the element with id ``within`` if
    given: what a browser sends back."""
    if within:
        page = page[page.index(f'id="{within}"') :]
    found = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert found is not None, f"no field {name!r} on the page"
    return html.unescape(found.group(1))


@contextmanager
def _portal(url: str, key: str) -> Iterator[httpx.Client]:
    """A client signed in to the portal with ``key`` on its sign-in form (cookie and token), as a
    person does; it holds the session cookie."""
    with httpx.Client(base_url=url, timeout=30) as portal:
        form = portal.get("/portal/sign-in", params={"next": "/portal/admin"})
        assert form.status_code == 200, form.text
        signed = portal.post(
            "/portal/sign-in",
            data={"csrf_token": _field(form.text, "csrf_token"), "next": "/portal/admin", "api_key": key},
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/portal/admin", signed.text
        yield portal


def _records(http: httpx.Client, key: str, **filters: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    params: dict[str, str] = {"pageSize": "1000", **filters}
    while True:
        page = _ok(http.get("/v1/accessRecords", params=params, headers={"Authorization": f"Bearer {key}"}))
        records += page.get("accessRecords", [])
        if not page.get("nextPageToken"):
            return records
        params["pageToken"] = page["nextPageToken"]


def test_every_audited_action_is_in_the_log_with_a_verifying_proof_and_no_personal_data(
    suite: UpSuite, tmp_path: Path
) -> None:
    admin = suite.create_key("admin", name="audit-admin")
    analyst = suite.create_key("analyst", name="audit-analyst")
    dpo = suite.create_key("dpo", name="audit-dpo")
    author = suite.create_key("policy_author", name="audit-author")
    approver = suite.create_key("policy_approver", name="audit-approver")
    ml = suite.create_key("ml_engineer", name="audit-ml")
    auditor = suite.create_key("auditor", name="audit-auditor")
    # The CLI's path: the gateway's own store, recorded under the gateway's name.
    revoked = suite.create_key("integration", name=CLI_KEY_NAME)
    revoke = suite.cli("keys", "revoke", _key_id(revoked))
    assert revoke.returncode == 0, revoke.stderr

    def as_(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    expected: list[tuple[str, str]] = []  # (action, principal)
    with httpx.Client(base_url=suite.url, timeout=120) as http:
        event_id = str(uuid.uuid4())
        _ok(
            http.post(
                "/v1/events",
                json={
                    "eventId": event_id,
                    "type": "phishing.clicked",
                    "source": "audit-e2e",
                    "subject": SUBJECT,
                    "occurredAt": "2026-12-01T09:00:00Z",
                    "severity": "SEVERITY_MEDIUM",
                    "summary": SUMMARY,
                },
                headers=as_(admin),
            )
        )
        # Reads of decrypted events; a read by a role without personal data leaves no record.
        event = _ok(http.get(f"/v1/events/{event_id}", headers=as_(analyst)))
        assert event["subject"] == SUBJECT
        pseudonym = event["subjectPseudonym"]
        _ok(http.get("/v1/events", params={"source": "audit-e2e"}, headers=as_(analyst)))
        _ok(http.get(f"/v1/events/{event_id}", headers=as_(author)))
        expected += [("event.read", analyst), ("event.read", analyst)]
        # Label and triage, twice: the history keeps both.
        name = f"events/{event_id}"
        _ok(
            http.post(
                f"/v1/{name}:label",
                json={"label": "LABEL_TRUE_POSITIVE", "note": NOTE, "triageState": "TRIAGE_STATE_IN_REVIEW"},
                headers=as_(analyst),
            )
        )
        _ok(http.post(f"/v1/{name}:label", json={"label": "LABEL_FALSE_POSITIVE"}, headers=as_(analyst)))
        expected += [("event.label", analyst), ("event.label", analyst)]
        # Consent, export.
        _ok(
            http.post(
                "/v1/consents:grant", json={"subject": SUBJECT, "purpose": "analytics"}, headers=as_(dpo)
            )
        )
        _ok(
            http.post(
                "/v1/consents:withdraw", json={"subject": SUBJECT, "purpose": "analytics"}, headers=as_(dpo)
            )
        )
        _ok(http.get("/v1/consents", params={"subject": SUBJECT}, headers=as_(dpo)))
        exported = http.post("/v1/subjects:export", json={"subject": SUBJECT}, headers=as_(dpo))
        assert exported.status_code == 200, exported.text
        expected += [("consent.grant", dpo), ("consent.withdraw", dpo), ("consent.read", dpo)]
        expected += [("subject.export", dpo)]
        # Retention rules and a run.
        _ok(
            http.post(
                "/v1/retentionRules:set",
                json={"rule": {"eventType": "login.failed", "retentionDays": 400}},
                headers=as_(dpo),
            )
        )
        _ok(http.post("/v1/retention:apply", json={"dryRun": True}, headers=as_(dpo)))
        expected += [("retention_rule.set", dpo), ("retention.apply", dpo)]
        # Policy transitions.
        policy_id = f"audit-{uuid.uuid4().hex[:8]}"
        created = _ok(
            http.post(
                "/v1/policies",
                params={"policyId": policy_id},
                json={
                    "title": "Audit walk",
                    "rule": 'event.type == "mfa.disabled"',
                    "severity": "SEVERITY_HIGH",
                },
                headers=as_(author),
            )
        )
        policy = created["name"]
        _ok(http.post(f"/v1/{policy}:submit", json={}, headers=as_(author)))
        _ok(http.post(f"/v1/{policy}:approve", json={}, headers=as_(approver)))
        _ok(http.post(f"/v1/{policy}:retire", json={"reason": "walk done"}, headers=as_(approver)))
        second = _ok(
            http.post(
                "/v1/policies",
                params={"policyId": f"{policy_id}-b"},
                json={
                    "title": "Audit walk b",
                    "rule": 'event.type == "login.failed"',
                    "severity": "SEVERITY_LOW",
                },
                headers=as_(author),
            )
        )["name"]
        _ok(http.post(f"/v1/{second}:submit", json={}, headers=as_(author)))
        _ok(http.post(f"/v1/{second}:reject", json={"reason": "not now"}, headers=as_(approver)))
        expected += [("policy.create", author), ("policy.submit", author), ("policy.approve", approver)]
        expected += [("policy.retire", approver), ("policy.reject", approver)]
        # A refused transition is recorded too, with its outcome.
        refused = http.post(f"/v1/{second}:approve", json={}, headers=as_(author))
        assert refused.status_code == 403, refused.text
        # Model training and promotion.
        model = _ok(
            http.post(
                "/v1/models:train", json={"algorithms": ["gradient_boosting"], "cvFolds": 2}, headers=as_(ml)
            )
        )
        _ok(http.post(f"/v1/{model['name']}:promote", json={}, headers=as_(ml)))
        expected += [("model.train", ml), ("model.promote", ml)]
        # Key rotations.
        _ok(http.post("/v1/kek:rotate", json={}, headers=as_(admin)))
        _ok(http.post("/v1/keys:rotate", json={"purpose": "KEY_PURPOSE_CHECKPOINT"}, headers=as_(admin)))
        expected += [("kek.rotate", admin), ("signing_key.rotate", admin)]
        # API keys through the gateway: an administrator creates one on the portal's admin page and
        # revokes it there, posting the pages' forms with their CSRF token.
        with _portal(suite.url, admin) as portal:
            page = portal.get("/portal/admin")
            assert page.status_code == 200, page.text
            created_page = portal.post(
                "/portal/admin/keys",
                data={
                    "csrf_token": _field(page.text, "csrf_token", within="create-key"),
                    "form_id": _field(page.text, "form_id", within="create-key"),
                    "name": PORTAL_KEY_NAME,
                    "roles": "integration",
                    "expires_in_days": "2",
                },
            )
            assert created_page.status_code == 200, created_page.text
            found = re.search(r'id="new-key" readonly value="([^"]+)"', created_page.text)
            assert found is not None, created_page.text
            new_key = html.unescape(found.group(1))
            new_id = _key_id(new_key)
            confirm = portal.get(f"/portal/admin/keys/{new_id}:revoke")
            assert confirm.status_code == 200, confirm.text
            form = confirm.text[confirm.text.index(f'action="/portal/admin/keys/{new_id}:revoke"') :]
            revoked_page = portal.post(
                f"/portal/admin/keys/{new_id}:revoke",
                data={"csrf_token": _field(form, "csrf_token"), "confirm": _field(form, "confirm")},
            )
            assert revoked_page.status_code == 303, revoked_page.text
            listed = portal.get(revoked_page.headers["location"])
            assert f"Revoked key <code>{new_id}</code>" in listed.text, listed.text
        expected += [("api_key.create", admin), ("api_key.revoke", admin)]
        # Erasure last: it shreds the person's keys.
        _ok(http.post("/v1/subjects:erase", json={"subject": SUBJECT, "reason": "request"}, headers=as_(dpo)))
        expected += [("subject.erase", dpo)]

        wanted = {(action, f"apikey:{_key_id(key)}") for action, key in expected}
        wanted |= {("api_key.create", "service:gateway"), ("api_key.revoke", "service:gateway")}
        deadline = time.monotonic() + 60
        while True:
            records = _records(http, auditor)
            seen = {(r["action"], r["principal"]) for r in records}
            if wanted <= seen or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert wanted - seen == set()

        mine = [r for r in records if (r["action"], r["principal"]) in wanted]
        by_action: dict[str, list[dict[str, Any]]] = {}
        for record in mine:
            by_action.setdefault(record["action"], []).append(record)
        # Every record names what was done to what, by whom, about whom, and how it ended.
        reads = by_action["event.read"]
        assert len(reads) == 2 and all(r.get("subjectPseudonyms") == [pseudonym] for r in reads)
        assert {r["resource"] for r in reads} == {name, "events"}
        labels = sorted(by_action["event.label"], key=lambda r: r["time"])
        assert [r["details"]["label"] for r in labels] == ["LABEL_TRUE_POSITIVE", "LABEL_FALSE_POSITIVE"]
        assert labels[0]["details"]["triage_state"] == "TRIAGE_STATE_IN_REVIEW"
        assert all(r["resource"] == name and r["subjectPseudonyms"] == [pseudonym] for r in labels)
        for action in (
            "consent.grant",
            "consent.withdraw",
            "consent.read",
            "subject.export",
            "subject.erase",
        ):
            assert by_action[action][0].get("subjectPseudonyms") == [pseudonym], action
        assert by_action["subject.erase"][0]["resource"].startswith("erasures/")
        assert {r["resource"] for r in by_action["policy.approve"]} == {policy}
        assert all(r["outcome"] == "OK" for r in mine)
        # Key changes: the key's id, its roles and expiry; neither its token nor its name.
        key_changes = sorted(
            by_action["api_key.create"] + by_action["api_key.revoke"], key=lambda r: r["action"]
        )
        by_admin = [r for r in key_changes if r["principal"] == f"apikey:{_key_id(admin)}"]
        assert [(r["action"], r["method"], r["resource"]) for r in by_admin] == [
            ("api_key.create", "awareness portal keys create", f"apiKeys/{new_id}"),
            ("api_key.revoke", "awareness portal keys revoke", f"apiKeys/{new_id}"),
        ]
        assert by_admin[0]["details"]["roles"] == "integration"
        assert set(by_admin[0]["details"]) == {"roles", "expire_time"}
        assert not by_admin[1].get("details")
        cli_revoked = [
            r
            for r in key_changes
            if r["principal"] == "service:gateway" and r["resource"] == f"apiKeys/{_key_id(revoked)}"
        ]
        assert [(r["action"], r["method"]) for r in cli_revoked] == [
            ("api_key.create", "awareness keys create"),
            ("api_key.revoke", "awareness keys revoke"),
        ]
        denied = [
            r
            for r in records
            if r["action"] == "policy.approve" and r["principal"] == f"apikey:{_key_id(author)}"
        ]
        assert [(r["resource"], r["outcome"]) for r in denied] == [(second, "PERMISSION_DENIED")]
        # The filters an auditor uses: who touched this person, and one principal's actions.
        about = _records(http, auditor, subjectPseudonym=pseudonym)
        assert {r["action"] for r in about} >= {
            "event.read",
            "event.label",
            "subject.export",
            "subject.erase",
        }
        assert {r["principal"] for r in _records(http, auditor, principal=f"apikey:{_key_id(dpo)}")} == {
            f"apikey:{_key_id(dpo)}"
        }
        # Nothing personal: not the identifier, the summary, the note, nor a reason or a key's name typed
        # by a person. No key's token, nor its secret part alone.
        text = json.dumps(records)
        for secret in (SUBJECT, SUMMARY, NOTE, "walk done", "not now", PORTAL_KEY_NAME, CLI_KEY_NAME):
            assert secret not in text
        for token in (new_key, revoked, admin, analyst, dpo, author, approver, ml, auditor):
            assert token not in text and token.split("_", 2)[2] not in text
        # An analyst may not read the records.
        assert http.get("/v1/accessRecords", headers=as_(analyst)).status_code == 403

        # Each record is a log event with a receipt and an inclusion proof a third party checks.
        keys = tmp_path / "keys.json"
        keys.write_text(json.dumps(_ok(http.get("/v1/keys", headers=as_(auditor)))))
        for record in mine:
            event_id = record["name"].removeprefix("events/")
            receipt = _ok(http.get(f"/v1/{record['name']}/receipt", headers=as_(auditor)))
            deadline = time.monotonic() + 60
            while True:
                proof = http.get("/v1/proofs:inclusion", params={"eventId": event_id}, headers=as_(auditor))
                if proof.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            proof_file, receipt_file = tmp_path / "proof.json", tmp_path / "receipt.json"
            proof_file.write_text(json.dumps(_ok(proof)))
            receipt_file.write_text(json.dumps(receipt))
            verified = suite.cli(
                "verify", "--proof", str(proof_file), "--receipt", str(receipt_file), "--keys", str(keys)
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
            # The leaf covers the record's payload: who, what, on what, and how it ended.
            assert "covers the event's payload" in verified.stdout, verified.stdout
            for fact in (record["principal"], record["action"], record["outcome"]):
                assert fact in verified.stdout, (fact, verified.stdout)
