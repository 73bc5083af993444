"""The evidence area in a real Chromium against the real suite (`awareness up` on PostgreSQL and
Redis): an auditor reads the checkpoint timeline, checks two checkpoints' consistency, checks a
receipt they hold, and time-stamps a file, each check done by the browser; the time-stamp is then
verified by `openssl ts -verify` against the suite's own CA. Tampered evidence turns red."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, FilePayload, Page, Request, Route, expect

from services.portal.domain.evidence import CA_FILE, tsr_filename
from tests.portal.browser import accessible, csp_reports, sign_in, sign_out
from tests.support.idp import IdentityProvider
from tests.support.suite import Backend, UpSuite, awareness_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPORT = b"Quarterly phishing report\nclicks: 3\nreported: 9\n"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


@pytest.fixture(scope="module")
def suite(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, idp: IdentityProvider
) -> Iterator[UpSuite]:
    data_dir = tmp_path_factory.mktemp("portal-evidence")
    # No model is needed here: scoring's start-up training would only compete for the CPU.
    env = {**idp.gateway_env(data_dir), "AWARENESS_SCORING_BOOTSTRAP_MODEL": "0"}
    with awareness_up(data_dir, backend, extra_env=env) as running:
        yield running


def _event(number: int) -> dict[str, object]:
    return {
        "type": "phishing.reported",
        "source": "gophish",
        "subject": f"person{number}@example.org",
        "occurredAt": f"2026-12-01T09:{number:02d}:00Z",
        "summary": f"evidence test event {number}",
    }


def _append_checkpointed(client: httpx.Client, events: list[dict[str, object]]) -> list[str]:
    """Append events and wait until the last is in a signed checkpoint; their ids."""
    ids = []
    for event in events:
        response = client.post("/v1/events", json=event)
        assert response.status_code == 200, response.text
        ids.append(response.json()["receipt"]["eventId"])
    deadline = time.monotonic() + 60
    while client.get(f"/v1/events/{ids[-1]}/receipt").json().get("state") != "STATE_CHECKPOINTED":
        assert time.monotonic() < deadline, f"event {ids[-1]} was not checkpointed within 60 s"
        time.sleep(0.3)
    return ids


@pytest.fixture(scope="module")
def events(suite: UpSuite, idp: IdentityProvider) -> list[str]:
    """Two batches, each checkpointed before the next: at least two checkpoints of different sizes.
    Appended as an integration (a token from the test's identity provider: no CLI start-up)."""
    token = idp.token(sub="loader", roles=["integration"])
    with httpx.Client(base_url=suite.url, headers={"authorization": f"Bearer {token}"}, timeout=30) as client:
        first = _append_checkpointed(client, [_event(number) for number in range(3)])
        second = _append_checkpointed(client, [_event(number) for number in range(3, 6)])
    return first + second


@pytest.fixture(scope="module")
def auditor_key(suite: UpSuite) -> str:
    return suite.create_key("auditor", name="auditor")


def _receipt(suite: UpSuite, key: str, event_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{suite.url}/v1/events/{event_id}/receipt", headers={"authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == 200, response.text
    receipt: dict[str, Any] = response.json()
    assert receipt["state"] == "STATE_CHECKPOINTED"
    return receipt


def _flip_first_byte(encoded: str) -> str:
    raw = bytearray(base64.b64decode(encoded))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _upload(page: Page, label: str, name: str, content: bytes, mime: str) -> None:
    payload: FilePayload = {"name": name, "mimeType": mime, "buffer": content}
    page.get_by_label(label, exact=True).set_input_files(files=[payload])


def test_auditor_reads_the_timeline_and_checks_consistency_in_the_browser(
    page: Page, suite: UpSuite, events: list[str], auditor_key: str
) -> None:
    blocked = csp_reports(page)
    sign_in(page, suite, auditor_key, then="/portal/evidence")
    expect(page.get_by_role("heading", name="Evidence", exact=True)).to_be_visible()
    rows = page.locator("table.checkpoint-timeline tbody tr")
    expect(rows.nth(1)).to_be_visible()
    sizes = [int(text.split()[0]) for text in rows.locator("th a").all_inner_texts()]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert sizes[0] >= len(events)
    expect(rows.first.locator("td").nth(2)).to_have_text("yes (internal)")
    expect(rows.first.locator("td code")).to_have_text(re.compile(r"^[0-9a-f]{16}$"))

    # Each checkpoint links to its note, whose signature the browser checks.
    rows.first.get_by_role("link").click()
    expect(page.get_by_role("heading", name=f"Checkpoint of {sizes[0]} leaves")).to_be_visible()
    assert f"\n{sizes[0]}\n" in page.locator("pre.signed-note").inner_text()
    expect(page.locator("[data-note-check]")).to_have_attribute("data-verified", "true")

    # The form's defaults: the oldest and the newest listed.
    page.get_by_role("link", name="Checkpoints", exact=True).click()
    expect(page.get_by_label("Older tree size")).to_have_value(str(sizes[-1]))
    expect(page.get_by_label("Newer tree size")).to_have_value(str(sizes[0]))
    page.get_by_role("button", name="Check consistency").click()
    expect(page.get_by_role("heading", name=f"{sizes[-1]} → {sizes[0]} leaves")).to_be_visible()
    evidence = page.locator("[data-evidence]")
    expect(evidence).to_have_attribute("data-verified", "true")
    expect(evidence.locator(".check-fail")).to_have_count(0)
    expect(evidence).to_contain_text("Older checkpoint is the proof's tree")
    assert f"first={sizes[-1]}" in page.url and f"second={sizes[0]}" in page.url

    # A size with no checkpoint is named beside the form, which keeps what was typed.
    page.get_by_label("Newer tree size").fill("999999")
    page.get_by_role("button", name="Check consistency").click()
    expect(page.get_by_role("alert")).to_contain_text("there is no checkpoint of tree size 999999")
    expect(page.get_by_label("Newer tree size")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("[data-evidence]")).to_have_count(0)
    assert blocked == []


def test_a_tampered_consistency_proof_turns_red(
    page: Page, suite: UpSuite, events: list[str], auditor_key: str
) -> None:
    sign_in(page, suite, auditor_key)

    def tamper(route: Route) -> None:
        response = route.fetch()
        body = response.text()
        match = re.search(r'"proof":\["([A-Za-z0-9+/]{4})', body)
        assert match is not None, "the page carries no proof to tamper with"
        flipped = ("B" if match.group(1)[0] == "A" else "A") + match.group(1)[1:]
        route.fulfill(response=response, body=body.replace(match.group(0), match.group(0)[:-4] + flipped, 1))

    page.route(re.compile(r".*/portal/evidence/consistency$"), tamper)
    page.goto(f"{suite.url}/portal/evidence/consistency")  # the oldest and the newest listed
    evidence = page.locator("[data-evidence]")
    expect(evidence).to_have_attribute("data-verified", "false")
    expect(evidence.locator(".check-fail").first).to_contain_text("Consistency proof does not show")


def test_auditor_checks_a_receipt_they_hold_and_a_tampered_copy_turns_red(
    page: Page, suite: UpSuite, events: list[str], auditor_key: str
) -> None:
    receipt = _receipt(suite, auditor_key, events[1])
    proofs: list[str] = []
    page.on(
        "request", lambda request: proofs.append(request.url) if "/evidence/proof" in request.url else None
    )
    sign_in(page, suite, auditor_key, then="/portal/evidence/receipt")
    result = page.locator("#receipt-result")

    _upload(page, "Receipt (JSON file)", "receipt.json", json.dumps(receipt).encode(), "application/json")
    expect(result).to_have_attribute("data-verified", "true")
    expect(result.locator(".check-fail")).to_have_count(0)
    expect(result.locator(".check-ok").first).to_contain_text(f"Receipt of event {receipt['eventId']} read")
    expect(result).to_contain_text(f"Leaf {receipt['leafIndex']}'s audit path leads to root")
    # Only the leaf index and the checkpoint's size went to the server, not the receipt.
    size = receipt["checkpoint"]["treeSize"]
    assert proofs and proofs[-1].endswith(f"/portal/evidence/proof?leaf={receipt['leafIndex']}&size={size}")

    tampered = {**receipt, "leafHash": _flip_first_byte(receipt["leafHash"])}
    _upload(page, "Receipt (JSON file)", "tampered.json", json.dumps(tampered).encode(), "application/json")
    expect(result).to_have_attribute("data-verified", "false")
    expect(result.locator(".check-fail").first).to_contain_text("not the checkpoint root")

    # What `awareness verify --receipt` also takes: an AppendEvent answer, in snake_case.
    snake = {
        "receipt": {
            "event_id": receipt["eventId"],
            "leaf_index": int(receipt["leafIndex"]),
            "leaf_hash": receipt["leafHash"],
            "state": receipt["state"],
            "checkpoint": {"tree_size": int(size), "note": receipt["checkpoint"]["note"]},
        }
    }
    _upload(page, "Receipt (JSON file)", "append.json", json.dumps(snake).encode(), "application/json")
    expect(result).to_have_attribute("data-verified", "true")

    _upload(page, "Receipt (JSON file)", "notes.txt", b"not json", "text/plain")
    expect(result).to_have_attribute("data-verified", "false")
    expect(result.locator(".check-fail")).to_have_text("✗ Error: the file is not JSON")


@needs_openssl
def test_auditor_time_stamps_a_file_and_openssl_verifies_the_reply(
    page: Page, suite: UpSuite, events: list[str], auditor_key: str, tmp_path: Path
) -> None:
    posted: list[Request] = []
    page.on("request", lambda request: posted.append(request) if request.method == "POST" else None)
    sign_in(page, suite, auditor_key, then="/portal/evidence/timestamp")
    digest = hashlib.sha256(REPORT).hexdigest()
    _upload(page, "File", "report.txt", REPORT, "text/plain")
    expect(page.get_by_label("SHA-256 of the file")).to_have_value(digest)
    command = page.locator("#timestamp-command")
    expected = f"openssl ts -verify -digest {digest} -in {tsr_filename(digest)} -CAfile {CA_FILE}"
    expect(command).to_have_text(expected)

    with page.expect_download() as downloading:
        page.get_by_role("button", name="Time-stamp").click()
    download = downloading.value
    assert download.suggested_filename == tsr_filename(digest)
    reply = tmp_path / download.suggested_filename
    download.save_as(reply)
    # The file never left the browser: the form sent its hash and the CSRF token, nothing more.
    sent = next(request for request in posted if request.url.endswith("/portal/evidence/timestamp"))
    assert set(dict(item.split("=", 1) for item in (sent.post_data or "").split("&"))) == {
        "csrf_token",
        "sha256",
    }
    assert REPORT not in (sent.post_data_buffer or b"")

    # The CA the page offers is the suite's own root, which `awareness up` created.
    root = suite.data_dir / "pki" / "root-ca.pem"
    offered = page.request.get(f"{suite.url}/portal/evidence/tsa-ca.pem")
    assert offered.status == 200 and offered.headers["content-type"] == "application/x-pem-file"
    assert offered.text().strip() == root.read_text().strip()
    (tmp_path / CA_FILE).write_bytes(offered.body())

    # The page's exact command, run where the person saved both files.
    verified = subprocess.run(
        shlex.split(command.inner_text()),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert verified.returncode == 0 and "Verification: OK" in verified.stdout, (
        verified.stdout + verified.stderr
    )
    (tmp_path / "report.txt").write_bytes(REPORT)
    against_root = subprocess.run(
        ["openssl", "ts", "-verify", "-data", "report.txt", "-in", reply.name, "-CAfile", str(root)],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert against_root.returncode == 0, against_root.stdout + against_root.stderr
    (tmp_path / "other.txt").write_bytes(REPORT + b"!")
    other = subprocess.run(
        ["openssl", "ts", "-verify", "-data", "other.txt", "-in", reply.name, "-CAfile", str(root)],
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert other.returncode != 0

    # A checkpoint's own token over its note, checked with the command its page shows.
    page.goto(f"{suite.url}/portal/evidence")
    page.locator("table.checkpoint-timeline tbody tr").first.get_by_role("link").click()
    for name in ("Download the note", "Download its time-stamp token"):
        link = page.get_by_role("link", name=name)
        href, saved_as = link.get_attribute("href"), link.get_attribute("download")
        assert href and saved_as
        fetched = page.request.get(f"{suite.url}{href}")
        assert fetched.ok, fetched.text()
        (tmp_path / saved_as).write_bytes(fetched.body())
    note_stamp = subprocess.run(
        shlex.split(page.locator("pre.command code").inner_text()),
        cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert note_stamp.returncode == 0 and "Verification: OK" in note_stamp.stdout, note_stamp.stderr

    # The server checks the hash too: a field violation, not a call to the TSA.
    token = page.locator("input[name=csrf_token]").first.input_value()
    wrong = page.request.post(
        f"{suite.url}/portal/evidence/timestamp", form={"csrf_token": token, "sha256": digest[:-1]}
    )
    assert wrong.status == 400
    assert "64 hexadecimal characters" in wrong.text()


def _noscript(html: str) -> str:
    """What a browser that runs no script shows in place of the checks (Playwright's script switch
    leaves <noscript> unrendered, so it is read from the page's source)."""
    return " ".join(re.findall(r"<noscript>(.*?)</noscript>", html, flags=re.DOTALL))


def test_without_javascript_the_pages_say_what_to_use_instead(
    browser: Browser, suite: UpSuite, auditor_key: str
) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        sign_in(page, suite, auditor_key, then="/portal/evidence/receipt")
        expect(page.get_by_role("heading", name="Check a receipt")).to_be_visible()
        said = _noscript(page.content())
        assert "This check needs JavaScript" in said
        assert "awareness verify --receipt receipt.json --proof proof.json --keys keys.json" in said
        expect(page.get_by_label("Receipt (JSON file)")).to_be_hidden()

        page.goto(f"{suite.url}/portal/evidence/timestamp")
        assert "this page cannot hash a file" in _noscript(page.content())
        expect(page.get_by_label("File", exact=True)).to_be_hidden()
        # A hash computed elsewhere and pasted still gets its time-stamp.
        digest = hashlib.sha256(REPORT).hexdigest()
        page.get_by_label("SHA-256 of the file").fill(digest)
        with page.expect_download() as downloading:
            page.get_by_role("button", name="Time-stamp").click()
        assert downloading.value.suggested_filename == tsr_filename(digest)
    finally:
        context.close()


def test_roles_without_the_permissions_see_no_link_and_are_refused(
    page: Page, suite: UpSuite, events: list[str], idp: IdentityProvider
) -> None:
    sign_in(page, suite, idp.token(sub="dora", roles=["dpo"]), then="/portal/evidence")
    expect(page.get_by_role("heading", name="Evidence", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Time-stamp a file")).to_have_count(0)
    token = page.locator("input[name=csrf_token]").first.input_value()
    forged = page.request.post(
        f"{suite.url}/portal/evidence/timestamp", form={"csrf_token": token, "sha256": "ab" * 32}
    )
    assert forged.status == 403 and "Your role does not allow this" in forged.text()

    sign_out(page)
    sign_in(page, suite, idp.token(sub="paul", roles=["policy_author"]))
    expect(page.get_by_role("link", name="Evidence")).to_have_count(0)
    assert page.request.get(f"{suite.url}/portal/evidence").status == 403
    refused = page.request.get(f"{suite.url}/portal/evidence/proof?leaf=0&size=1")
    assert refused.status == 403 and refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]


def test_evidence_pages_meet_wcag_2_2_aa(
    page: Page, suite: UpSuite, events: list[str], auditor_key: str
) -> None:
    # axe-core injects styles the CSP blocks and reports: kept apart from the flows that assert none.
    receipt = _receipt(suite, auditor_key, events[0])
    sign_in(page, suite, auditor_key, then="/portal/evidence")
    accessible(page, "evidence-timeline")
    page.get_by_role("button", name="Check consistency").click()
    expect(page.locator("[data-evidence]")).to_have_attribute("data-verified", "true")
    accessible(page, "evidence-consistency")
    page.goto(f"{suite.url}/portal/evidence/receipt")
    _upload(page, "Receipt (JSON file)", "receipt.json", json.dumps(receipt).encode(), "application/json")
    expect(page.locator("#receipt-result")).to_have_attribute("data-verified", "true")
    accessible(page, "evidence-receipt")
    page.goto(f"{suite.url}/portal/evidence/timestamp")
    _upload(page, "File", "report.txt", REPORT, "text/plain")
    expect(page.get_by_label("SHA-256 of the file")).to_have_value(hashlib.sha256(REPORT).hexdigest())
    accessible(page, "evidence-timestamp")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.goto(f"{suite.url}/portal/evidence")
    page.locator("table.checkpoint-timeline tbody tr").first.get_by_role("link").click()
    expect(page.locator("[data-note-check]")).to_have_attribute("data-verified", "true")
    accessible(page, "evidence-checkpoint-phone")
