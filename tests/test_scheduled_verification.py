"""The scheduled verification and the witness, against a running suite on PostgreSQL.

``awareness verification run`` passes on a healthy log (full, then incrementally), records each result
in the log as an access record, and ingest's /metrics shows it; the alert rules stay quiet on the
scraped values. After one record is changed behind the log's back (an UPDATE in SQL), a full run fails
naming the record, the failed access record is in the log, the failure counter is 1, and promtool
fires AwarenessVerificationFailed on a series built from the scraped values.

``awareness witness`` accepts the log's consistent growth, and refuses a checkpoint it saw before that
the log no longer extends: a larger tree (a rollback) or another root at a smaller size (a fork).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import create_engine, text

from services.evidence.checkpoint import CheckpointBody, NoteSigner, parse_signed_note, sign_checkpoint
from tests.resilience.harness import ProcessSuite, http_json, metric_value, parse_metrics, wait_until
from tests.support.resources import temporary_database
from tests.support.suite import run_module

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
RULES_FILE = REPO / "helm" / "awareness" / "rules" / "awareness-alerts.yaml"
PROMTOOL_TESTS = REPO / "tests" / "helm" / "alert_rules_test.yaml"
FAILURES = "awareness_verification_failures_total"
LAST_SUCCESS = "awareness_verification_last_success_timestamp_seconds"
Samples = dict[str, list[tuple[dict[str, str], float]]]


class Suite:
    def __init__(self, suite: ProcessSuite, database_url: str) -> None:
        self.suite = suite
        self.database_url = database_url
        self.writer = suite.create_api_key(name="verification-writer", roles=("integration",))
        self.auditor = suite.create_api_key(name="verification-auditor", roles=("auditor",))
        self.event_ids: list[str] = []

    def append(self, count: int) -> None:
        for _ in range(count):
            event_id = str(uuid.uuid4())
            status, body = http_json(
                "POST",
                f"{self.suite.gateway_url}/v1/events",
                api_key=self.writer,
                body={
                    "eventId": event_id,
                    "type": "phishing.clicked",
                    "source": "verification-test",
                    "subject": "ada@example.org",
                    "occurredAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    "severity": "SEVERITY_MEDIUM",
                },
            )
            assert status == 200, body
            self.event_ids.append(event_id)

    def checkpoint(self) -> dict[str, Any]:
        status, body = http_json(
            "GET", f"{self.suite.gateway_url}/v1/checkpoints/latest", api_key=self.auditor
        )
        assert status == 200, body
        return dict(body)

    def wait_for_checkpoint(self, *, at_least: int) -> dict[str, Any]:
        """Appended events are checkpointed in the background: wait until a checkpoint covers them."""

        def covered() -> dict[str, Any] | None:
            checkpoint = self.checkpoint()
            return checkpoint if int(checkpoint.get("treeSize", 0)) >= at_least else None

        found: dict[str, Any] = wait_until(covered, timeout=60, what=f"a checkpoint of {at_least} leaves")
        return found

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**self.suite.base_env(), "AWARENESS_API_KEY": self.auditor}
        return run_module("services.cli", *args, env=env, timeout=180)

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return parse_metrics(self.suite.scrape("ingest"))

    def metrics_once(self, name: str, check: str, *, at_least: float) -> Samples:
        """Ingest's /metrics once ``name{check}`` reaches ``at_least`` (it caches its reads briefly)."""

        def scraped() -> Samples | None:
            samples = self.metrics()
            return samples if metric_value(samples, name, check=check) >= at_least else None

        found: Samples = wait_until(scraped, timeout=30, what=f"{name}{{check={check}}} in ingest's /metrics")
        return found

    def access_records(self, action: str) -> list[dict[str, Any]]:
        status, body = http_json(
            "GET",
            f"{self.suite.gateway_url}/v1/accessRecords?action={action}",
            api_key=self.auditor,
        )
        assert status == 200, body
        return list(body.get("accessRecords", []))

    def keys_file(self, directory: Path) -> Path:
        status, body = http_json("GET", f"{self.suite.gateway_url}/v1/keys", api_key=self.auditor)
        assert status == 200, body
        path = directory / "keys.json"
        path.write_text(json.dumps(body))
        return path


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str) -> Iterator[Suite]:
    directory = tmp_path_factory.mktemp("scheduled-verification")
    with temporary_database(postgres_url, prefix="awareness_sv") as database_url:
        suite = ProcessSuite(
            data_dir=directory / "data",
            database_url=database_url,
            redis_url=redis_url,
            extra_env={
                "AWARENESS_GATEWAY_RATE_KEY_PREFIX": f"awareness-test-{uuid.uuid4().hex[:12]}:ratelimit"
            },
        )
        try:
            suite.start_all(timeout=180)
            yield Suite(suite, database_url)
        finally:
            suite.stop_all()


def _promtool_test(promtool: str, directory: Path, groups: list[dict[str, Any]]) -> str:
    tests = {"rule_files": [str(RULES_FILE)], "evaluation_interval": "1m", "tests": groups}
    path = directory / "verification_rules_test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    tested = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    return tested.stdout


def _expected_firing() -> list[dict[str, Any]]:
    """The firing alert as the chart's own rule tests expect it (labels and annotations)."""
    document = yaml.safe_load(PROMTOOL_TESTS.read_text())
    group = next(g for g in document["tests"] if g["name"] == "a failed scheduled verification fires")
    return list(group["alert_rule_test"][0]["exp_alerts"])


# Order matters within the module: the log is tampered with in the last test.


def test_a_healthy_log_passes_is_recorded_and_keeps_the_alerts_quiet(
    running: Suite, promtool: str, tmp_path: Path
) -> None:
    running.append(3)
    running.wait_for_checkpoint(at_least=3)
    first = running.run("verification", "run")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "verification log: passed" in first.stdout
    assert "verification audit: passed" in first.stdout
    assert "records re-hashed; leaf indices 0.." in first.stdout  # a full run: nothing verified before

    running.append(2)
    size = int(running.checkpoint()["treeSize"])
    running.wait_for_checkpoint(at_least=size + 2)
    second = running.run("verification", "run")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "new records re-hashed" in second.stdout  # incremental, from the first run's checkpoint
    assert "consistency proof from tree size" in second.stdout

    # By hand, with a state file: everything first, then only what came after the remembered checkpoint.
    state = tmp_path / "verified-head.json"
    whole = running.run("verify", "--incremental", str(state), "--quiet")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    remembered = json.loads(state.read_text())
    running.append(1)
    running.wait_for_checkpoint(at_least=int(remembered["tree_size"]) + 1)
    since = running.run("verify", "--incremental", str(state), "--quiet")
    assert since.returncode == 0, since.stdout + since.stderr
    assert f"consistency proof from tree size {remembered['tree_size']} to" in since.stdout
    assert json.loads(state.read_text())["tree_size"] > remembered["tree_size"]
    # A remembered checkpoint the log does not hold (another root at that size) is refused.
    state.write_text(json.dumps({**remembered, "root_hash": "00" * 32}))
    rewritten = running.run("verify", "--incremental", str(state), "--quiet")
    assert rewritten.returncode == 1
    assert "now has another root than when it was verified" in rewritten.stdout

    records = running.access_records("verification.log")
    assert [record["outcome"] for record in records[:2]] == ["passed", "passed"]
    assert {record["principal"] for record in records} == {"cli:verification"}
    assert records[0]["details"]["scope"] == "incremental"
    assert records[1]["details"]["scope"] == "full"
    assert running.access_records("verification.audit")[0]["outcome"] == "passed"

    samples = running.metrics_once(LAST_SUCCESS, "audit", at_least=1)
    assert metric_value(samples, FAILURES, check="log") == metric_value(samples, FAILURES, check="audit") == 0
    now = datetime.now(UTC).timestamp()
    last_success = metric_value(samples, LAST_SUCCESS, check="log")
    assert 0 < now - last_success < 600
    # promtool's clock starts at 0: the success happened (now - last_success) seconds before it.
    ago = int(now - last_success)
    series = [
        {"series": f'{FAILURES}{{namespace="awareness", check="log"}}', "values": "0x10"},
        {"series": f'{LAST_SUCCESS}{{namespace="awareness", check="log"}}', "values": f"{-ago}x10"},
    ]
    quiet = [
        {
            "name": "scraped from a healthy suite",
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": "AwarenessVerificationFailed", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "AwarenessVerificationStale", "exp_alerts": []},
            ],
        }
    ]
    assert "SUCCESS" in _promtool_test(promtool, tmp_path, quiet)


def _forged_state(directory: Path, *, origin: str, tree_size: int) -> tuple[Path, Path]:
    """A state dir holding a checkpoint the witness trusts (signed by a key given to it) that the
    log never had, and that key's verifier file."""
    signer = NoteSigner(name="witness-test", private_key=ed25519.Ed25519PrivateKey.generate())
    note = sign_checkpoint(origin=origin, tree_size=tree_size, root_hash=os.urandom(32), key=signer)
    state = directory / f"forged-{tree_size}"
    state.mkdir()
    (state / "checkpoint.json").write_text(json.dumps({"note": note.encode()}))
    vkey = directory / f"forged-{tree_size}.vkey"
    vkey.write_text(signer.verifier.vkey + "\n")
    return state, vkey


def test_the_witness_accepts_growth_and_refuses_a_rollback_or_a_fork(running: Suite, tmp_path: Path) -> None:
    keys = running.keys_file(tmp_path)
    state = tmp_path / "witness"
    gateway = ["--gateway", running.suite.gateway_url]
    first = running.run("witness", *gateway, "--keys", str(keys), "--state-dir", str(state))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "no checkpoint seen before" in first.stdout
    seen = json.loads((state / "checkpoint.json").read_text())

    running.append(2)
    running.wait_for_checkpoint(at_least=int(seen["treeSize"]) + 2)
    grown = running.run("witness", *gateway, "--keys", str(keys), "--state-dir", str(state))
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert f"consistency proof from tree size {seen['treeSize']} to" in grown.stdout

    current = running.checkpoint()
    origin = CheckpointBody.parse(parse_signed_note(current["note"]).text).origin
    size = int(current["treeSize"])
    # The witness saw a larger tree than the log now serves: the log was rolled back.
    ahead, ahead_key = _forged_state(tmp_path, origin=origin, tree_size=size + 5)
    rolled_back = running.run(
        "witness", *gateway, "--keys", str(keys), "--keys", str(ahead_key), "--state-dir", str(ahead)
    )
    assert rolled_back.returncode == 1, rolled_back.stdout + rolled_back.stderr
    assert "FAIL  rollback" in rolled_back.stdout
    # The witness saw another tree of a smaller size: the log does not extend it.
    other, other_key = _forged_state(tmp_path, origin=origin, tree_size=size - 1)
    kept = (other / "checkpoint.json").read_text()
    forked = running.run(
        "witness", *gateway, "--keys", str(keys), "--keys", str(other_key), "--state-dir", str(other)
    )
    assert forked.returncode == 1, forked.stdout + forked.stderr
    assert "FAIL  fork: the consistency proof" in forked.stdout
    # Nothing stored on a refusal: the checkpoint seen before stays, as evidence.
    assert (other / "checkpoint.json").read_text() == kept
    # A checkpoint signed by no trusted key is refused too.
    untrusted = running.run(
        "witness", *gateway, "--keys", str(other_key), "--state-dir", str(tmp_path / "new")
    )
    assert untrusted.returncode == 1
    assert "not signed by a trusted key" in untrusted.stdout


def test_a_record_changed_behind_the_logs_back_fails_the_run_and_fires_the_alert(
    running: Suite, promtool: str, tmp_path: Path
) -> None:
    before = metric_value(running.metrics(), FAILURES, check="log")
    assert before == 0
    victim = running.event_ids[0]
    engine = create_engine(running.database_url)
    try:
        with engine.begin() as connection:
            # The append-only triggers stop the services' own role; an owner can switch them off.
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            changed = connection.execute(
                text("UPDATE awareness_ingest.event_records SET source = 'tampered' WHERE event_id = :id"),
                {"id": victim},
            )
            assert changed.rowcount == 1
    finally:
        engine.dispose()

    failed = running.run("verification", "run", "--full")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"verification log: failed: record {victim}" in failed.stdout
    assert "verification audit: passed" in failed.stdout
    newest = running.access_records("verification.log")[0]
    assert newest["outcome"] == "failed"
    assert victim in newest["details"]["failure"]
    assert "ada@example.org" not in json.dumps(newest)

    samples = running.metrics_once(FAILURES, "log", at_least=1)
    after = metric_value(samples, FAILURES, check="log")
    assert after == 1
    assert metric_value(samples, FAILURES, check="audit") == 0
    # The scrapes before and after, a minute apart, as Prometheus would have stored them.
    values = " ".join([str(int(before))] * 3 + [str(int(after))] * 4)
    firing = [
        {
            "name": "scraped from a suite whose log was changed",
            "interval": "1m",
            "input_series": [
                {"series": f'{FAILURES}{{namespace="awareness", check="log"}}', "values": values},
                {"series": f'{FAILURES}{{namespace="awareness", check="audit"}}', "values": "0x6"},
            ],
            "alert_rule_test": [
                {
                    "eval_time": "5m",
                    "alertname": "AwarenessVerificationFailed",
                    "exp_alerts": _expected_firing(),
                }
            ],
        }
    ]
    assert "SUCCESS" in _promtool_test(promtool, tmp_path, firing)
